//! Write-path throughput: many users posting concurrently through the commands tier; every
//! accepted post was acknowledged by the broker (acks=all) before its answer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the commands tier.
    #[arg(
        long,
        env = "CHAT_COMMANDS_URL",
        default_value = "http://127.0.0.1:8090"
    )]
    url: String,
    /// Users posting (each is limited to 10 messages/s by default, so this bounds throughput).
    #[arg(long, default_value_t = 1500)]
    users: usize,
    /// Rooms the users are spread over.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Requests in flight at once (closed loop).
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    #[arg(long, default_value_t = 5)]
    warmup_secs: u64,
    /// Message size.
    #[arg(long, default_value_t = 200)]
    content_bytes: usize,
}

#[derive(Clone)]
struct Poster {
    token: String,
    room: String,
}

pub async fn run(args: Args, results: &Path) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = args.url.trim_end_matches('/').to_string();
    println!(
        "setting up {} users in {} rooms at {url} ...",
        args.users, args.rooms
    );
    let started = Instant::now();
    let tokens: Vec<String> = futures::stream::iter(0..args.users)
        .map(|i| user(&http, &url, i))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let mut rooms = Vec::with_capacity(args.rooms);
    for owner in tokens.iter().take(args.rooms) {
        let answer: Value = http
            .post(format!("{url}/v1/rooms"))
            .bearer_auth(owner)
            .json(&json!({"name": "bench", "visibility": "public"}))
            .send()
            .await?
            .json()
            .await?;
        rooms.push(answer["room_id"].as_str().context("room_id")?.to_string());
    }
    let posters: Vec<Poster> = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| Poster {
            token: token.clone(),
            room: rooms[i % rooms.len()].clone(),
        })
        .collect();
    futures::stream::iter(posters.iter().skip(rooms.len()))
        .map(|p| {
            http.post(format!("{url}/v1/rooms/{}/join", p.room))
                .bearer_auth(&p.token)
                .send()
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    println!("setup took {:.1} s", started.elapsed().as_secs_f64());

    let content = "x".repeat(args.content_bytes);
    println!("warm-up {} s ...", args.warmup_secs);
    load(
        &http,
        &url,
        &posters,
        &content,
        args.concurrency,
        Duration::from_secs(args.warmup_secs),
    )
    .await?;

    let commands_pid = report::stack_pid("commands").or_else(|| report::find_pid("/commands"));
    let broker_pid = report::stack_pid("broker-1").or_else(|| report::find_pid("kafka.Kafka"));
    let before = (
        commands_pid.and_then(report::proc_stats),
        broker_pid.and_then(report::proc_stats),
    );
    println!(
        "measuring {} s at concurrency {} ...",
        args.duration_secs, args.concurrency
    );
    let measured = Instant::now();
    let outcome = load(
        &http,
        &url,
        &posters,
        &content,
        args.concurrency,
        Duration::from_secs(args.duration_secs),
    )
    .await?;
    let elapsed = measured.elapsed().as_secs_f64();
    let after = (
        commands_pid.and_then(report::proc_stats),
        broker_pid.and_then(report::proc_stats),
    );
    let cpu = |b, a| report::usage(b, a, elapsed).unwrap_or(Value::Null);

    let accepted = outcome.latency.len();
    let result = json!({
        "benchmark": "commands",
        "what": "POST /v1/rooms/{id}/messages through the commands tier; answered after the broker acknowledged (idempotent producer, acks=all)",
        "machine": report::machine(),
        "users": args.users,
        "rooms": args.rooms,
        "concurrency": args.concurrency,
        "content_bytes": args.content_bytes,
        "seconds": elapsed,
        "accepted": accepted,
        "accepted_per_sec": accepted as f64 / elapsed,
        "latency_ms": report::latency_ms(&outcome.latency),
        "errors": outcome.errors,
        "commands_process": cpu(before.0, after.0),
        "broker_process": cpu(before.1, after.1),
    });
    println!(
        "accepted {accepted} in {elapsed:.1} s = {:.0} msg/s; latency p50 {} ms, p99 {} ms, max {} ms; errors {:?}",
        accepted as f64 / elapsed,
        result["latency_ms"]["p50"],
        result["latency_ms"]["p99"],
        result["latency_ms"]["max"],
        outcome.errors
    );
    println!(
        "commands process: {}; broker process: {}",
        result["commands_process"], result["broker_process"]
    );
    report::write(results, "commands", &result)
}

async fn user(http: &reqwest::Client, url: &str, i: usize) -> anyhow::Result<String> {
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let username = format!("b{i}x{}", &suffix[suffix.len() - 12..]);
    let password = format!("bench-{suffix}");
    let registered = http
        .post(format!("{url}/v1/auth/register"))
        .json(&json!({"email": format!("{username}@bench.test"), "username": username, "password": password}))
        .send()
        .await?;
    anyhow::ensure!(
        registered.status().is_success(),
        "register: {}",
        registered.text().await?
    );
    let login: Value = http
        .post(format!("{url}/v1/auth/login"))
        // Spread over addresses so the per-IP login throttle does not see one attacker.
        .header("x-forwarded-for", format!("10.99.{}.{}", i / 250, i % 250))
        .json(&json!({"login": username, "password": password}))
        .send()
        .await?
        .json()
        .await?;
    Ok(login["access_token"]
        .as_str()
        .context("access_token")?
        .to_string())
}

struct Outcome {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

async fn load(
    http: &reqwest::Client,
    url: &str,
    posters: &[Poster],
    content: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + duration;
    let shared = Arc::new(Mutex::new(Outcome {
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        errors: BTreeMap::new(),
    }));
    let workers = (0..concurrency).map(|w| {
        let (http, url, shared) = (http.clone(), url.to_string(), shared.clone());
        let mine: Vec<Poster> = posters
            .iter()
            .skip(w)
            .step_by(concurrency)
            .cloned()
            .collect();
        let content = content.to_string();
        tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut n = 0usize;
            while Instant::now() < deadline && !mine.is_empty() {
                let poster = &mine[n % mine.len()];
                n += 1;
                let key = uuid::Uuid::now_v7().simple().to_string();
                let sent = Instant::now();
                let response = http
                    .post(format!("{url}/v1/rooms/{}/messages", poster.room))
                    .bearer_auth(&poster.token)
                    .json(&json!({"client_msg_id": key, "content": content}))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let _ = r.bytes().await;
                        local.saturating_record(sent.elapsed().as_micros() as u64);
                    }
                    Ok(r) => *errors.entry(r.status().as_u16().to_string()).or_default() += 1,
                    Err(e) => {
                        *errors
                            .entry(if e.is_timeout() {
                                "timeout".into()
                            } else {
                                "connection".into()
                            })
                            .or_default() += 1
                    }
                }
            }
            let mut shared = shared.lock().await;
            let _ = shared.latency.add(&local);
            for (k, v) in errors {
                *shared.errors.entry(k).or_default() += v;
            }
        })
    });
    for worker in workers.collect::<Vec<_>>() {
        worker.await?;
    }
    let outcome = Arc::try_unwrap(shared)
        .map_err(|_| anyhow::anyhow!("workers still running"))?
        .into_inner();
    Ok(outcome)
}
