//! A fan-out node started by a test against the test stack, and a small socket client.

#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use test_support::{Service, env, free_port};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Node {
    pub service: Service,
    pub ws_url: String,
    pub http_url: String,
}

impl Node {
    /// Starts a node with the stack's settings plus `extra`, and waits until it is ready.
    pub async fn start(extra: &[(&str, &str)]) -> anyhow::Result<Node> {
        Self::start_within(extra, Duration::from_secs(300)).await
    }

    /// As `start`, failing (with the node's output) when it is not ready within `limit`.
    pub async fn start_within(extra: &[(&str, &str)], limit: Duration) -> anyhow::Result<Node> {
        let port = free_port();
        let mut vars = env::ws_fanout_node(port);
        // The test log holds every earlier test's records; a node that re-read all of them
        // would spend the test's time catching up (resumes here stay within a room's buffer).
        vars.push(("CHAT_WS_WARM_RECORDS".into(), "1000".into()));
        for (k, v) in extra {
            vars.push((k.to_string(), v.to_string()));
        }
        let service = Service::spawn("ws-fanout", vars)?;
        let http_url = format!("http://127.0.0.1:{port}");
        service
            .wait_ready(&format!("{http_url}/readyz"), limit)
            .await?;
        Ok(Node {
            service,
            ws_url: format!("ws://127.0.0.1:{port}/v1/ws"),
            http_url,
        })
    }

    /// The node's own counters (tail lag, records per channel, gaps), for failure messages.
    pub async fn state(&self) -> String {
        let Ok(r) = reqwest::get(format!("{}/metrics", self.http_url)).await else {
            return "metrics unavailable".into();
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("ws_"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let Ok(r) = reqwest::get(format!("{}/metrics", self.http_url)).await else {
            return -1.0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .filter(|rest| rest.starts_with(' '))
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    pub fn rss_kb(&self) -> anyhow::Result<u64> {
        let pid = self.service.pid().context("node not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }
}

/// What the client read next.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Closed(Option<(u16, String)>),
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str, token: Option<&str>) -> anyhow::Result<Client> {
        let url = match token {
            Some(t) => format!("{url}?access_token={t}"),
            None => url.to_string(),
        };
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Client { ws })
    }

    pub async fn send(&mut self, frame: Value) -> anyhow::Result<()> {
        self.ws.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, message: Message) -> anyhow::Result<()> {
        self.ws.send(message).await?;
        Ok(())
    }

    /// The next JSON frame or the close, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Incoming> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("no frame in time")?;
            match message {
                None => return Ok(Incoming::Closed(None)),
                Some(Err(e)) => bail!("socket error: {e}"),
                Some(Ok(Message::Text(t))) => {
                    return Ok(Incoming::Json(serde_json::from_str(t.as_str())?));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Ok(Incoming::Closed(frame.map(
                        |CloseFrame { code, reason }| (u16::from(code), reason.to_string()),
                    )));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next JSON frame (a close is an error).
    pub async fn json(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        match self.next(timeout).await? {
            Incoming::Json(v) => Ok(v),
            Incoming::Closed(c) => bail!("socket closed: {c:?}"),
        }
    }

    /// Skips frames until one of `kind`.
    pub async fn until(&mut self, kind: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.json(left).await?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }
}

/// Uploads `bytes` as `name` through the entry with `token` (`POST /v1/files`, multipart).
pub async fn upload(
    http: &reqwest::Client,
    token: &str,
    name: &str,
    bytes: Vec<u8>,
) -> reqwest::Result<reqwest::Response> {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
    );
    http.post(format!("{}/v1/files", env::entry_url()))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
}

/// A Redis prefix of its own for nodes writing to a private broker: presence is one system per
/// prefix (any node's sweep takes any lapsed user of it), so on the suite's shared prefix such a
/// node swept users of other tests and wrote their "offline" to its own broker, where those
/// tests never found it (2 runs in 4). Its revocation marks are declared kept, as the commands
/// tier does for the prefixes it serves (no session of it is revoked).
pub async fn private_prefix(kind: &str) -> anyhow::Result<String> {
    let prefix = format!("{kind}-{}:", uuid::Uuid::now_v7().simple());
    let mut redis = platform::cache::connect(&env::redis_url()).await?;
    let _: () = redis::cmd("SET")
        .arg(platform::auth::revocations_kept_key(&prefix))
        .arg(1)
        .query_async(&mut redis)
        .await?;
    Ok(prefix)
}

/// The socket URL of the stack's entry (nginx).
pub fn entry_ws_url() -> String {
    format!("{}/v1/ws", env::entry_url().replacen("http", "ws", 1))
}
