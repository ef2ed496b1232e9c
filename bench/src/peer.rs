//! The Socket.io peer's nodes (`bench/peer/server.js`), started for a run and stopped with it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::report;

/// Running peer nodes; dropping this stops them.
pub struct Peer {
    children: Vec<tokio::process::Child>,
    pub urls: Vec<String>,
    pub pids: Vec<u32>,
}

impl Peer {
    /// Starts `nodes` processes on consecutive ports from `first_port`, all on one Redis adapter
    /// channel of their own, and waits until each answers.
    pub async fn start(nodes: usize, first_port: u16) -> anyhow::Result<Self> {
        let modules = PathBuf::from(report::stack_env("CHAT_BENCH_PEER_MODULES")?);
        let redis = report::stack_env("CHAT_REDIS_URL")?;
        let prefix = std::env::var("CHAT_REDIS_PREFIX").unwrap_or_default();
        let script = std::env::current_dir()?.join("bench/peer/server.js");
        let key = format!("{prefix}socket.io-{}", uuid::Uuid::now_v7().simple());
        let mut peer = Peer {
            children: Vec::new(),
            urls: Vec::new(),
            pids: Vec::new(),
        };
        for n in 0..nodes.max(1) {
            let port = first_port + n as u16;
            let child = tokio::process::Command::new("node")
                .arg(&script)
                .env("NODE_PATH", &modules)
                .env("NODE_ENV", "production")
                .env("PEER_PORT", port.to_string())
                .env("PEER_REDIS_URL", &redis)
                .env("PEER_KEY", &key)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting node bench/peer/server.js")?;
            peer.pids
                .push(child.id().context("peer node exited at once")?);
            peer.children.push(child);
            peer.urls.push(format!("ws://127.0.0.1:{port}"));
        }
        let http = reqwest::Client::new();
        for url in &peer.urls {
            let ready = url.replacen("ws", "http", 1) + "/ready";
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if http
                    .get(&ready)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("peer node {url} did not answer within 20 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(peer)
    }

    /// Stops the nodes (SIGTERM, then kill) and waits for them.
    pub async fn stop(mut self) {
        for child in &mut self.children {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .arg(pid.to_string())
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}
