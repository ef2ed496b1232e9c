//! Idle sockets held by one or several fan-out nodes: how many, what each costs in resident
//! memory, and how long a connection takes to be established and subscribed.
//!
//! Every socket authenticates (token in the URL) and subscribes to one of a few public rooms,
//! then stays idle (the client answers the node's pings). Each node's RSS is read from /proc
//! before the first and after the last socket; the difference per socket is the cost.
//!
//! One process may hold at most 20,000 open files here, on either side of a connection, so the
//! sockets are held by worker processes (this same binary, `sockets-worker`), at most
//! `--per-worker` each, and more than one node's worth is spread over extra ws-fanout nodes
//! started for the run. Clients connect to the nodes directly: nginx, itself held to 20,000
//! files per worker process, would be the limit being measured.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::{client, report};

#[derive(clap::Args)]
pub struct Args {
    /// Sockets to open in all.
    #[arg(long, default_value_t = 19_500)]
    sockets: usize,
    /// Fan-out nodes sharing them: the stack's own node plus `nodes - 1` started for the run.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Sockets per client process (the per-process open-file limit here is 20,000).
    #[arg(long, default_value_t = 19_500)]
    per_worker: usize,
    /// Distinct users the sockets belong to.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Rooms the sockets subscribe to (round-robin).
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Connections being set up at once, per worker.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Result file name (bench/results/<name>.json).
    #[arg(long, default_value = "sockets")]
    name: String,
}

/// One client process's share, run by `bench sockets-worker`.
#[derive(clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    count: usize,
    #[arg(long, value_delimiter = ',')]
    rooms: Vec<String>,
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Offset of this worker's first socket, so users and rooms stay round-robin overall.
    #[arg(long, default_value_t = 0)]
    first: usize,
}

/// What a worker reports once all its sockets are open (one JSON line on stdout).
#[derive(Serialize, Deserialize)]
struct Report {
    held: usize,
    failures: usize,
    first_error: Option<String>,
    connect_us: Vec<u64>,
}

/// Tokens reach workers through the environment, not the command line (`ps` shows that).
const TOKENS_VAR: &str = "BENCH_SOCKET_TOKENS";

/// Opens the sockets, reports, then keeps them (answering pings) until stdin closes.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let tokens: Vec<String> = std::env::var(TOKENS_VAR)
        .context(TOKENS_VAR)?
        .split(',')
        .map(str::to_string)
        .collect();
    anyhow::ensure!(
        !tokens.is_empty() && !args.rooms.is_empty(),
        "no tokens or rooms"
    );
    let opened = client::open_all(
        client::Flavor::Ours,
        (args.first..args.first + args.count).map(|i| {
            let url = format!("{}?access_token={}", args.url, tokens[i % tokens.len()]);
            ((), url, Some(args.rooms[i % args.rooms.len()].clone()))
        }),
        args.concurrency,
    )
    .await;
    let report = Report {
        held: opened.sockets.len(),
        failures: opened.failures,
        first_error: opened.first_error,
        connect_us: opened.connect_us,
    };
    let held = opened.sockets.into_iter().map(|(_, socket)| socket);
    println!("{}", serde_json::to_string(&report)?);
    let readers: Vec<_> = held
        .map(|mut socket| {
            tokio::spawn(async move {
                // Reading keeps answering the node's pings, as a live client does.
                while let Some(Ok(_)) = socket.next().await {}
            })
        })
        .collect();
    // The parent closes stdin when it has measured.
    let mut rest = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut rest).await;
    for reader in readers {
        reader.abort();
    }
    Ok(())
}

/// A node taking part: its socket URL, pid, and the process when the run started it (stopped
/// when this is dropped).
pub struct Node {
    pub ws_url: String,
    pub pid: u32,
    _started: Option<test_support::Service>,
}

/// A ws-fanout node beside the stack's own, on the same broker, registry and Redis.
pub async fn extra_node() -> anyhow::Result<Node> {
    let port = test_support::free_port();
    let binary = std::env::current_exe()?
        .parent()
        .context("bench has no directory")?
        .join("ws-fanout");
    let service =
        test_support::Service::spawn_path(binary, test_support::env::ws_fanout_node(port))?;
    service
        .wait_ready(
            &format!("http://127.0.0.1:{port}/readyz"),
            Duration::from_secs(120),
        )
        .await?;
    Ok(Node {
        ws_url: format!("ws://127.0.0.1:{port}/v1/ws"),
        pid: service.pid().context("node pid")? as u32,
        _started: Some(service),
    })
}

pub async fn run(args: Args, results: &Path) -> anyhow::Result<()> {
    let commands = test_support::Api::new(report::stack_env("CHAT_COMMANDS_URL")?);
    let ws_base = report::stack_env("CHAT_WS_URL")?.replacen("http", "ws", 1);
    let mut nodes = vec![Node {
        ws_url: format!("{ws_base}/v1/ws"),
        pid: report::stack_pid("ws-fanout").context("ws-fanout pid (run through bench/run)")?,
        _started: None,
    }];
    for _ in 1..args.nodes.max(1) {
        nodes.push(extra_node().await?);
    }

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
    let tokens = users
        .iter()
        .map(|u| u.access_token.as_str())
        .collect::<Vec<_>>()
        .join(",");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before: Vec<u64> = nodes
        .iter()
        .map(|n| report::proc_stats(n.pid).map(|s| s.1).unwrap_or(0))
        .collect();

    // Each node's share, cut into workers of at most `per_worker` sockets.
    let per_node = args.sockets.div_ceil(nodes.len());
    let mut workers = Vec::new();
    let mut first = 0usize;
    let exe = std::env::current_exe()?;
    for (n, node) in nodes.iter().enumerate() {
        let share = per_node.min(args.sockets.saturating_sub(first));
        let mut left = share;
        while left > 0 {
            let count = left.min(args.per_worker.max(1));
            let child = tokio::process::Command::new(&exe)
                .arg("sockets-worker")
                .args(["--url", &node.ws_url])
                .args(["--count", &count.to_string()])
                .args(["--rooms", &rooms.join(",")])
                .args(["--concurrency", &args.concurrency.to_string()])
                .args(["--first", &first.to_string()])
                .env(TOKENS_VAR, &tokens)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting a socket worker")?;
            workers.push((n, child));
            first += count;
            left -= count;
        }
    }
    println!(
        "opening {} sockets on {} node(s) from {} worker process(es) ...",
        args.sockets,
        nodes.len(),
        workers.len()
    );

    let client_processes = workers.len();
    let started = Instant::now();
    let mut latencies = report::histogram(3);
    let (mut held, mut failures, mut first_error) = (vec![0usize; nodes.len()], 0usize, None);
    let mut outputs = Vec::new();
    for (node, child) in &mut workers {
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(900), lines.next_line())
            .await
            .context("a worker did not report within 15 min")??
            .context("a worker ended without reporting")?;
        let report: Report = serde_json::from_str(&line)?;
        held[*node] += report.held;
        failures += report.failures;
        if first_error.is_none() {
            first_error = report.first_error;
        }
        for us in report.connect_us {
            latencies.saturating_record(us);
        }
        outputs.push(lines);
    }
    let setup_seconds = started.elapsed().as_secs_f64();
    // The sockets stay idle; let the nodes settle (allocator, first pings) before measuring.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let rss_after: Vec<u64> = nodes
        .iter()
        .map(|n| report::proc_stats(n.pid).map(|s| s.1).unwrap_or(0))
        .collect();
    let total: usize = held.iter().sum();
    let per_node_json: Vec<_> = (0..nodes.len())
        .map(|n| {
            let kb = rss_after[n].saturating_sub(rss_before[n]) as f64 / held[n].max(1) as f64;
            println!(
                "node {n}: {} sockets, RSS {} kB -> {} kB: {kb:.1} kB per idle socket",
                held[n], rss_before[n], rss_after[n]
            );
            json!({"sockets": held[n], "rss_before_kb": rss_before[n], "rss_after_kb": rss_after[n],
                   "rss_per_idle_socket_kb": kb})
        })
        .collect();
    let per_socket_kb = rss_after
        .iter()
        .zip(&rss_before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum::<u64>() as f64
        / total.max(1) as f64;
    let connect = report::latency_ms(&latencies);
    println!(
        "{total} sockets held by {} node(s) ({failures} failed{}), set up in {setup_seconds:.1} s",
        nodes.len(),
        first_error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    println!("{per_socket_kb:.1} kB node RSS per idle socket");
    println!(
        "connect + auth + subscribe: p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
        connect["p50"], connect["p95"], connect["p99"], connect["max"]
    );
    // Closing stdin lets each worker drop its sockets and end.
    for (_, child) in &mut workers {
        drop(child.stdin.take());
    }
    for (_, mut child) in workers {
        if tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .is_err()
        {
            child.kill().await?;
        }
    }
    drop(outputs);
    if total == 0 {
        bail!("no socket was held");
    }
    report::write(
        results,
        &args.name,
        &json!({
            "benchmark": "sockets",
            "machine": report::machine(),
            "sockets_requested": args.sockets,
            "sockets_held": total,
            "nodes": nodes.len(),
            "per_node": per_node_json,
            "client_processes": client_processes,
            "failures": failures,
            "first_error": first_error,
            "setup_seconds": setup_seconds,
            "rss_per_idle_socket_kb": per_socket_kb,
            "connect_subscribe_ms": connect,
        }),
    )
}
