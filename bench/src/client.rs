//! The benchmark's socket client: connect, authenticate (token in the URL), subscribe.

use std::time::{Duration, Instant};

use anyhow::bail;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects, subscribes, and waits for `subscribed`; returns the socket and how long it took.
///
/// The read buffer is small for the same reason as the node's: tungstenite's default 128 KiB
/// per socket would make the load generator, not the node, the memory bound of a run.
pub async fn open(url: &str, room: &str) -> anyhow::Result<(Socket, Duration)> {
    let started = Instant::now();
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    ws.send(Message::text(
        json!({"type": "subscribe", "room_id": room}).to_string(),
    ))
    .await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                match v["type"].as_str() {
                    Some("subscribed") => return Ok((ws, started.elapsed())),
                    Some("error") => bail!("subscribe refused: {v}"),
                    _ => {}
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => bail!("closed before subscribed"),
            Err(_) => bail!("no subscribed frame within 60 s"),
        }
    }
}

/// What [`open_all`] got: the sockets with their callers' tags, and every set-up time.
pub struct Opened<T> {
    pub sockets: Vec<(T, Socket)>,
    pub connect_us: Vec<u64>,
    pub failures: usize,
    pub first_error: Option<String>,
}

/// Opens a socket per `(tag, url, room)`, `concurrency` at a time.
pub async fn open_all<T>(
    targets: impl Iterator<Item = (T, String, String)>,
    concurrency: usize,
) -> Opened<T> {
    let mut opening = futures::stream::iter(targets)
        .map(|(tag, url, room)| async move { (tag, open(&url, &room).await) })
        .buffer_unordered(concurrency.max(1));
    let mut opened = Opened {
        sockets: Vec::new(),
        connect_us: Vec::new(),
        failures: 0,
        first_error: None,
    };
    while let Some((tag, outcome)) = opening.next().await {
        match outcome {
            Ok((socket, took)) => {
                opened.connect_us.push(took.as_micros() as u64);
                opened.sockets.push((tag, socket));
            }
            Err(e) => {
                opened.failures += 1;
                opened.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    opened
}
