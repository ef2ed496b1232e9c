//! The benchmark's socket clients: ours (connect, authenticate with the token in the URL,
//! subscribe) and the peer's (Engine.IO v4 over a WebSocket, Socket.io `join`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Loopback source addresses the clients spread over. A connection is one (source address,
/// source port) per destination, and the machine's ephemeral range holds about 28,000 ports:
/// beyond that on one node a single source address runs out, several do not (every 127/8
/// address is loopback, so nothing outside the machine is involved).
const SOURCE_ADDRESSES: u8 = 8;

/// Connects to a `ws://127.0.0.1:port/...` URL from the `index`-th loopback source address.
///
/// The read buffer is small for the same reason as the node's: tungstenite's default 128 KiB
/// per socket would make the load generator, not the node, the memory bound of a run.
pub async fn connect(url: &str, index: usize) -> anyhow::Result<Socket> {
    let authority = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .with_context(|| format!("not a ws:// URL: {url}"))?;
    let target: SocketAddr = tokio::net::lookup_host(authority)
        .await?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("no IPv4 address for {authority}"))?;
    let tcp = tokio::net::TcpSocket::new_v4()?;
    if target.ip().is_loopback() {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (index % SOURCE_ADDRESSES as usize) as u8);
        tcp.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    }
    let stream = tcp.connect(target).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        url,
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await?;
    Ok(ws)
}

/// The next text frame, within 60 s.
async fn next_text(ws: &mut Socket) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_owned()),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => bail!("closed during set-up"),
            Err(_) => bail!("no answer within 60 s"),
        }
    }
}

/// Our socket: connects (token in `url`), subscribes to `room` when given and waits for
/// `subscribed`.
async fn open(url: &str, room: Option<&str>, index: usize) -> anyhow::Result<Socket> {
    let mut ws = connect(url, index).await?;
    let Some(room) = room else {
        return Ok(ws);
    };
    ws.send(Message::text(
        json!({"type": "subscribe", "room_id": room}).to_string(),
    ))
    .await?;
    loop {
        let v: Value = serde_json::from_str(&next_text(&mut ws).await?)?;
        match v["type"].as_str() {
            Some("subscribed") => return Ok(ws),
            Some("error") => bail!("subscribe refused: {v}"),
            _ => {}
        }
    }
}

/// The peer's socket: Engine.IO open (`0{..}`), Socket.io connect (`40` -> `40{..}`), then
/// `join` with an acknowledgement (`420["join",room]` -> `430[{"ok":true}]`) when `room` is given.
async fn open_peer(base: &str, room: Option<&str>, index: usize) -> anyhow::Result<Socket> {
    let mut ws = connect(
        &format!("{base}/socket.io/?EIO=4&transport=websocket"),
        index,
    )
    .await?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        bail!("expected an Engine.IO open packet, got {open}");
    }
    ws.send(Message::text("40")).await?;
    let connected = next_text(&mut ws).await?;
    if !connected.starts_with("40") {
        bail!("expected a Socket.io connect packet, got {connected}");
    }
    let Some(room) = room else {
        return Ok(ws);
    };
    ws.send(Message::text(format!("420{}", json!(["join", room]))))
        .await?;
    loop {
        let frame = next_text(&mut ws).await?;
        if frame == "2" {
            ws.send(Message::text("3")).await?;
        } else if let Some(ack) = frame.strip_prefix("430") {
            if ack.contains(r#""ok":true"#) {
                return Ok(ws);
            }
            bail!("join refused: {ack}");
        }
    }
}

/// Which kind of socket [`open_all`] opens.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
pub enum Flavor {
    Ours,
    Peer,
}

/// What [`open_all`] got: the sockets with their callers' tags, and every set-up time.
pub struct Opened<T> {
    pub sockets: Vec<(T, Socket)>,
    pub connect_us: Vec<u64>,
    pub failures: usize,
    pub first_error: Option<String>,
}

/// Opens a socket per `(tag, url, room)`, `concurrency` at a time, timing each from connect to
/// subscribed (or joined).
pub async fn open_all<T>(
    flavor: Flavor,
    targets: impl Iterator<Item = (T, String, Option<String>)>,
    concurrency: usize,
) -> Opened<T> {
    let mut opening = futures::stream::iter(targets.enumerate())
        .map(|(index, (tag, url, room))| async move {
            let started = Instant::now();
            let socket = match flavor {
                Flavor::Ours => open(&url, room.as_deref(), index).await,
                Flavor::Peer => open_peer(&url, room.as_deref(), index).await,
            };
            (tag, socket.map(|s| (s, started.elapsed())))
        })
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
