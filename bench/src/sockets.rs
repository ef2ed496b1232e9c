//! Idle sockets one fan-out node holds: how many, what each costs in resident memory, and how
//! long a connection takes to be established and subscribed.
//!
//! Every socket authenticates (token in the URL) and subscribes to one of a few public rooms,
//! then stays idle (the client answers the node's pings). The node's RSS is read from /proc
//! before the first and after the last socket; the difference per socket is the cost.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Sockets to open (the per-process open-file limit here is 20,000).
    #[arg(long, default_value_t = 19_500)]
    sockets: usize,
    /// Distinct users the sockets belong to.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Rooms the sockets subscribe to (round-robin).
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects, subscribes, and waits for `subscribed`.
async fn open(url: String, room: String) -> anyhow::Result<(Socket, Duration)> {
    let started = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
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

pub async fn run(args: Args, results: &Path) -> anyhow::Result<()> {
    let commands = test_support::Api::new(
        std::env::var("CHAT_COMMANDS_URL").context("CHAT_COMMANDS_URL (run through bench/run)")?,
    );
    let ws_base = std::env::var("CHAT_WS_URL")
        .context("CHAT_WS_URL (run through bench/run)")?
        .replacen("http", "ws", 1);
    let pid = report::stack_pid("ws-fanout").context("ws-fanout pid (run through bench/run)")?;

    println!(
        "setting up {} users and {} rooms ...",
        args.users, args.rooms
    );
    let mut users = Vec::new();
    for _ in 0..args.users.max(1) {
        users.push(commands.user("sock").await?);
    }
    let mut rooms = Vec::new();
    for owner in users.iter().take(args.rooms.max(1)) {
        rooms.push(commands.create_room(owner, "public").await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, rss_before) = report::proc_stats(pid).context("ws-fanout /proc stats")?;

    let started = Instant::now();
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut held = Vec::with_capacity(args.sockets);
    let mut failures = 0usize;
    let mut first_error = None;
    let mut opening = futures::stream::iter(0..args.sockets)
        .map(|i| {
            let user = &users[i % users.len()];
            let url = format!("{ws_base}/v1/ws?access_token={}", user.access_token);
            open(url, rooms[i % rooms.len()].clone())
        })
        .buffer_unordered(args.concurrency.max(1));
    while let Some(result) = opening.next().await {
        match result {
            Ok((socket, took)) => {
                latencies.record(took.as_micros() as u64)?;
                held.push(socket);
            }
            Err(e) => {
                failures += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    drop(opening);
    let setup_seconds = started.elapsed().as_secs_f64();
    // The sockets stay idle; let the node settle (allocator, first pings) before measuring.
    let idle = Duration::from_secs(25);
    let mut readers = Vec::new();
    for mut socket in held {
        // Reading keeps answering the node's pings, as a live client does.
        readers.push(tokio::spawn(async move {
            let until = tokio::time::sleep(idle + Duration::from_secs(5));
            tokio::pin!(until);
            loop {
                tokio::select! {
                    _ = &mut until => return socket,
                    m = socket.next() => if m.is_none() { return socket },
                }
            }
        }));
    }
    tokio::time::sleep(idle).await;
    let (_, rss_after) = report::proc_stats(pid).context("ws-fanout /proc stats")?;
    let open_sockets = readers.len();
    let per_socket_kb = (rss_after.saturating_sub(rss_before)) as f64 / open_sockets.max(1) as f64;
    let connect = report::latency_ms(&latencies);
    println!(
        "{open_sockets} sockets held by one node ({failures} failed{}), set up in {setup_seconds:.1} s",
        first_error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    println!("node RSS {rss_before} kB -> {rss_after} kB: {per_socket_kb:.1} kB per idle socket");
    println!(
        "connect + auth + subscribe: p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
        connect["p50"], connect["p95"], connect["p99"], connect["max"]
    );
    for r in readers {
        drop(r.await);
    }
    report::write(
        results,
        "sockets",
        &json!({
            "benchmark": "sockets",
            "machine": report::machine(),
            "sockets_requested": args.sockets,
            "sockets_held": open_sockets,
            "failures": failures,
            "first_error": first_error,
            "setup_seconds": setup_seconds,
            "rss_before_kb": rss_before,
            "rss_after_kb": rss_after,
            "rss_per_idle_socket_kb": per_socket_kb,
            "connect_subscribe_ms": connect,
        }),
    )
}
