//! Post-to-socket delivery latency under the seed's load, beside the broker's own floor.
//!
//! Senders post through the commands tier's HTTP API on a fixed schedule (open loop: a post is
//! due at its slot whether or not earlier ones were answered, and its latency counts from that
//! slot, so a stalled server cannot hide its stall by slowing the generator down). Each post's
//! content carries its slot time; every subscribed socket that receives the event records
//! `receipt - slot`. The load is counted as deliveries: at 100,000 messages/minute in rooms of
//! 100 sockets that is ~167,000 socket deliveries/s.
//!
//! The broker's produce-to-consume latency is measured first, on the same stack and at the same
//! rate ([`crate::floor`]), so the delivery figure stands beside what the log path cannot beat.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::{client, floor, report};

#[derive(clap::Args)]
pub struct Args {
    /// Sockets subscribed (each to one room).
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Sockets per room; rooms = sockets / room_size.
    #[arg(long, default_value_t = 100)]
    room_size: usize,
    /// Posting rates over all rooms (messages/minute), measured one after another on the same
    /// sockets, lowest first: the seed's 100K and the rates below it, to show where the machine
    /// stops keeping up.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5000,10000,25000,50000,100000"
    )]
    rates: Vec<u64>,
    /// Posting members per room (each user may post 10 messages/s).
    #[arg(long, default_value_t = 4)]
    senders_per_room: usize,
    /// Measured seconds per rate, after the warm-up.
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    #[arg(long, default_value_t = 5)]
    warmup_secs: u64,
    /// Seconds of the broker floor measurement (same rate, just before each step's load).
    #[arg(long, default_value_t = 20)]
    floor_secs: u64,
    /// Message size (the slot timestamp plus padding).
    #[arg(long, default_value_t = 200)]
    content_bytes: usize,
    /// Posts in flight at most; a slot that finds none free is counted as shed.
    #[arg(long, default_value_t = 2000)]
    max_in_flight: usize,
    /// Sockets being set up at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Result file name (bench/results/<name>.json).
    #[arg(long, default_value = "delivery")]
    name: String,
}

/// One rate of the ladder: the slots it measures and what the sockets saw of them.
struct Step {
    /// Slots (µs since the run's base) whose deliveries are measured: after the step's warm-up,
    /// before its end.
    window: Range<u64>,
    latency: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
}

/// What every socket reader adds to, for the whole run.
struct Tally {
    base: Instant,
    steps: std::sync::RwLock<Vec<Arc<Step>>>,
    /// Events whose seq was not the socket's last + 1 (a gap or a repeat).
    out_of_order: AtomicU64,
    resyncs: AtomicU64,
    /// Sockets the node closed, by close code (or `error` / `eof` without a close frame).
    closes: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    fn step_of(&self, slot: u64) -> Option<Arc<Step>> {
        let steps = self.steps.read().unwrap_or_else(|p| p.into_inner());
        steps
            .iter()
            .rev()
            .find(|s| s.window.contains(&slot))
            .cloned()
    }

    fn closed(&self, how: String) {
        *lock(&self.closes).entry(how).or_default() += 1;
    }
}

/// The number after `key` in `frame`, up to the first byte that is not a digit.
fn number_after(frame: &str, key: &str, last: bool) -> Option<u64> {
    let at = if last {
        frame.rfind(key)
    } else {
        frame.find(key)
    }? + key.len();
    let digits = frame[at..].bytes().take_while(u8::is_ascii_digit).count();
    frame[at..at + digits].parse().ok()
}

/// An event frame's (outer) seq and the slot stamped in its content.
///
/// Cheap substring reads instead of a JSON parse: the generator shares two cores with the whole
/// platform, and a full parse of 167,000 frames/s would cost it most of one. The outer object's
/// keys are serialized in order (`event`, `room_id`, `seq`, `type`), so the last `"seq":` is the
/// frame's; the content is `t<slot>|<padding>`, which no other field can contain.
fn read_event(frame: &str) -> Option<(u64, u64)> {
    if !frame.contains(r#""type":"event""#) {
        return None;
    }
    let seq = number_after(frame, r#""seq":"#, true)?;
    let slot = number_after(frame, r#""content":"t"#, false)?;
    Some((seq, slot))
}

async fn read(mut socket: client::Socket, tally: Arc<Tally>, mut stop: watch::Receiver<bool>) {
    let mut pending: Vec<(Arc<Step>, u64)> = Vec::with_capacity(64);
    let mut last_seq: Option<u64> = None;
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            frame = socket.next() => frame,
        };
        match frame {
            Some(Ok(Message::Text(text))) => {
                let now = tally.now_us();
                if let Some((seq, slot)) = read_event(text.as_str()) {
                    if last_seq.is_some_and(|l| seq != l + 1) {
                        tally.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    last_seq = Some(seq);
                    if let Some(step) = tally.step_of(slot) {
                        step.delivered.fetch_add(1, Ordering::Relaxed);
                        pending.push((step, now.saturating_sub(slot)));
                    }
                } else if text.as_str().contains(r#""type":"resync""#) {
                    tally.resyncs.fetch_add(1, Ordering::Relaxed);
                }
                if pending.len() == pending.capacity() {
                    flush(&mut pending).await;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                tally.closed(frame.map_or("no code".into(), |f| u16::from(f.code).to_string()));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => {
                tally.closed("error".into());
                break;
            }
            None => {
                tally.closed("eof".into());
                break;
            }
        }
    }
    flush(&mut pending).await;
}

async fn flush(pending: &mut Vec<(Arc<Step>, u64)>) {
    for (step, latency) in pending.drain(..) {
        step.latency.lock().await.saturating_record(latency);
    }
}

struct Room {
    id: String,
    senders: Vec<test_support::User>,
    sockets: u64,
}

/// Posts accepted and refused, and how long the commands tier took to answer.
struct Posting {
    accept_latency: Histogram<u64>,
    accepted_in_window: u64,
    expected_deliveries: u64,
    shed: u64,
    errors: BTreeMap<String, u64>,
}

/// The stack's processes whose CPU and RSS each step reports, plus the generator itself.
const PROCESSES: [&str; 7] = [
    "commands",
    "ws-fanout",
    "broker",
    "projections",
    "query-api",
    "mongo",
    "clickhouse",
];

fn process_stats() -> Vec<(String, Option<(f64, u64)>)> {
    PROCESSES
        .iter()
        .map(|p| {
            (
                p.to_string(),
                report::stack_pid(p).and_then(report::proc_stats),
            )
        })
        .chain(std::iter::once((
            "load-generator".to_string(),
            report::proc_stats(std::process::id()),
        )))
        .collect()
}

fn process_usage(
    before: &[(String, Option<(f64, u64)>)],
    after: &[(String, Option<(f64, u64)>)],
    seconds: f64,
) -> Value {
    before
        .iter()
        .zip(after)
        .filter_map(|((name, b), (_, a))| Some((name.clone(), report::usage(*b, *a, seconds)?)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub async fn run(args: Args, results: &Path) -> anyhow::Result<()> {
    let commands_url = report::stack_env("CHAT_COMMANDS_URL")?;
    let ws_url = format!(
        "{}/v1/ws",
        report::stack_env("CHAT_WS_URL")?.replacen("http", "ws", 1)
    );
    let brokers = report::stack_env("CHAT_KAFKA_BROKERS")?;
    let partitions = std::env::var("CHAT_ROOM_PARTITIONS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(12);
    let room_count = (args.sockets / args.room_size.max(1)).max(1);
    let per_room = args.senders_per_room.max(1);

    println!(
        "setting up {} senders in {room_count} rooms ...",
        room_count * per_room
    );
    let setup = Instant::now();
    let users: Vec<test_support::User> = futures::stream::iter(0..room_count * per_room)
        .map(|_| {
            let api = test_support::Api::new(commands_url.clone());
            async move { api.user("dlv").await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let api = test_support::Api::new(commands_url.clone());
    let mut rooms = Vec::with_capacity(room_count);
    for members in users.chunks(per_room) {
        let id = api.create_room(&members[0], "public").await?;
        for member in &members[1..] {
            let joined = api.join(member, &id).await?;
            anyhow::ensure!(joined.status.is_success(), "join: {}", joined.body);
        }
        rooms.push(Room {
            id,
            senders: members.to_vec(),
            sockets: 0,
        });
    }
    println!("setup took {:.1} s", setup.elapsed().as_secs_f64());

    println!("opening {} sockets ...", args.sockets);
    let opened = client::open_all(
        (0..args.sockets).map(|i| {
            let room = &rooms[i % room_count];
            let user = &room.senders[(i / room_count) % per_room];
            let url = format!("{ws_url}?access_token={}", user.access_token);
            (i % room_count, url, room.id.clone())
        }),
        args.connect_concurrency,
    )
    .await;
    if let Some(e) = &opened.first_error {
        eprintln!("socket failed: {e}");
    }
    let connect_failures = opened.failures;
    let mut connect = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for &us in &opened.connect_us {
        connect.saturating_record(us);
    }
    let mut sockets = Vec::with_capacity(opened.sockets.len());
    for (room, socket) in opened.sockets {
        rooms[room].sockets += 1;
        sockets.push(socket);
    }
    let sockets_open = sockets.len();
    let connect_ms = report::latency_ms(&connect);
    println!(
        "{sockets_open} sockets open ({connect_failures} failed); connect+auth+subscribe {}",
        summary(&connect_ms)
    );

    let tally = Arc::new(Tally {
        base: Instant::now(),
        steps: std::sync::RwLock::new(Vec::new()),
        out_of_order: AtomicU64::new(0),
        resyncs: AtomicU64::new(0),
        closes: std::sync::Mutex::new(BTreeMap::new()),
    });
    let (stop, stopped) = watch::channel(false);
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|s| tokio::spawn(read(s, tally.clone(), stopped.clone())))
        .collect();

    let warmup = Duration::from_secs(args.warmup_secs);
    let measured = Duration::from_secs(args.duration_secs);
    let mut steps = Vec::new();
    for &per_minute in &args.rates {
        let rate = per_minute as f64 / 60.0;
        println!("\n== {per_minute} messages/minute ({rate:.0}/s) ==");
        let floor = floor::measure(
            &brokers,
            partitions,
            rate,
            Duration::from_secs(3),
            Duration::from_secs(args.floor_secs),
            args.content_bytes,
        )
        .await?;
        println!(
            "broker floor:   produce-to-consume {}",
            summary(&floor.produce_to_consume_ms)
        );

        let start = tally.now_us() + 100_000;
        let window =
            start + warmup.as_micros() as u64..start + (warmup + measured).as_micros() as u64;
        let step = Arc::new(Step {
            window,
            latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            delivered: AtomicU64::new(0),
        });
        tally
            .steps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(step.clone());
        let before = process_stats();
        let posting = post(
            &args,
            &commands_url,
            &rooms,
            rate,
            &tally,
            start,
            step.window.clone(),
        )
        .await?;
        let after = process_stats();
        let busy_secs = (step.window.end - start) as f64 / 1e6;

        // Deliveries still on their way: wait until all arrived or nothing moved for 10 s.
        let mut last = (step.delivered.load(Ordering::Relaxed), Instant::now());
        while last.0 < posting.expected_deliveries {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = step.delivered.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        let delivered = step.delivered.load(Ordering::Relaxed);
        let secs = measured.as_secs_f64();
        let result = json!({
            "messages_per_minute": per_minute,
            "accepted_per_sec": posting.accepted_in_window as f64 / secs,
            "shed": posting.shed,
            "post_errors": posting.errors,
            "post_answer_ms": report::latency_ms(&posting.accept_latency),
            "deliveries_expected": posting.expected_deliveries,
            "deliveries": delivered,
            "deliveries_per_sec": delivered as f64 / secs,
            "deliveries_missing": posting.expected_deliveries.saturating_sub(delivered),
            "broker_floor": floor.json(),
            "processes": process_usage(&before, &after, busy_secs),
        });
        println!(
            "posts:          {:.0}/s accepted, shed {}, errors {:?}; answered {}",
            result["accepted_per_sec"].as_f64().unwrap_or(0.0),
            posting.shed,
            posting.errors,
            summary(&result["post_answer_ms"])
        );
        println!(
            "deliveries:     {delivered} of {} ({:.0}/s)",
            posting.expected_deliveries,
            delivered as f64 / secs
        );
        println!("processes (CPU % of one core): {}", result["processes"]);
        steps.push((step, result));
    }
    let _ = stop.send(true);
    for reader in readers {
        let _ = reader.await;
    }
    // Readers hand their latencies over in batches (and all of them on stopping), so each
    // step's histogram is complete only now.
    println!(
        "\npost-to-socket delivery at {sockets_open} sockets, beside the broker's floor at the same rate:"
    );
    let mut table = Vec::new();
    for (step, mut result) in steps {
        result["delivery_ms"] = report::latency_ms(&*step.latency.lock().await);
        println!(
            "{:>7} msg/min: delivery {}\n{:>16} broker   {}",
            result["messages_per_minute"],
            summary(&result["delivery_ms"]),
            "",
            summary(&result["broker_floor"]["produce_to_consume_ms"])
        );
        table.push(result);
    }
    let out_of_order = tally.out_of_order.load(Ordering::Relaxed);
    let resyncs = tally.resyncs.load(Ordering::Relaxed);
    let closes = lock(&tally.closes).clone();
    println!(
        "\nover the run: out of order {out_of_order}, resyncs {resyncs}, sockets closed by the node {closes:?}"
    );
    report::write(
        results,
        &args.name,
        &json!({
            "benchmark": "delivery",
            "what": "POST /v1/rooms/{id}/messages (commands tier, answered after the broker's ack) to the event frame on every subscribed socket of one ws-fanout node; latency from the post's scheduled slot (open loop); the load generator runs on the same machine",
            "machine": report::machine(),
            "sockets": args.sockets,
            "sockets_open": sockets_open,
            "connect_failures": connect_failures,
            "connect_subscribe_ms": connect_ms,
            "rooms": room_count,
            "room_size": args.room_size,
            "senders": room_count * per_room,
            "content_bytes": args.content_bytes,
            "warmup_seconds": args.warmup_secs,
            "measured_seconds_per_step": args.duration_secs,
            "steps": table,
            "out_of_order": out_of_order,
            "resyncs": resyncs,
            "sockets_closed": closes,
        }),
    )
}

fn summary(v: &Value) -> String {
    format!(
        "p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
        v["p50"], v["p95"], v["p99"], v["max"]
    )
}

/// The open-loop poster: one post per slot, round-robin over rooms and each room's senders.
async fn post(
    args: &Args,
    commands_url: &str,
    rooms: &[Room],
    rate: f64,
    tally: &Arc<Tally>,
    start_us: u64,
    window: Range<u64>,
) -> anyhow::Result<Posting> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_in_flight)
        .timeout(Duration::from_secs(30))
        .build()?;
    let permits = Arc::new(Semaphore::new(args.max_in_flight.max(1)));
    let outcome = Arc::new(std::sync::Mutex::new(Posting {
        accept_latency: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        accepted_in_window: 0,
        expected_deliveries: 0,
        shed: 0,
        errors: BTreeMap::new(),
    }));
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let start = tally.base + Duration::from_micros(start_us);
    let end = tally.base + Duration::from_micros(window.end);
    let padding = "x".repeat(args.content_bytes.saturating_sub(16));
    let mut tasks = tokio::task::JoinSet::new();
    let mut n: u32 = 0;
    loop {
        let due = start + period * n;
        if due >= end {
            break;
        }
        let room = &rooms[n as usize % rooms.len()];
        let sender = &room.senders[(n as usize / rooms.len()) % room.senders.len()];
        n += 1;
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            lock(&outcome).shed += 1;
            continue;
        };
        let slot = due.duration_since(tally.base).as_micros() as u64;
        let in_window = window.contains(&slot);
        let request = http
            .post(format!("{commands_url}/v1/rooms/{}/messages", room.id))
            .bearer_auth(&sender.access_token)
            .json(&json!({
                "client_msg_id": uuid::Uuid::now_v7().simple().to_string(),
                "content": format!("t{slot}|{padding}"),
            }));
        let (outcome, tally, subscribers) = (outcome.clone(), tally.clone(), room.sockets);
        tasks.spawn(async move {
            let answer = request.send().await;
            let took = tally.now_us().saturating_sub(slot);
            let mut o = lock(&outcome);
            match answer {
                Ok(r) if r.status().as_u16() == 201 => {
                    if in_window {
                        o.accepted_in_window += 1;
                        o.expected_deliveries += subscribers;
                        o.accept_latency.saturating_record(took);
                    }
                }
                Ok(r) => *o.errors.entry(r.status().as_u16().to_string()).or_default() += 1,
                Err(e) => {
                    let kind = if e.is_timeout() {
                        "timeout"
                    } else {
                        "connection"
                    };
                    *o.errors.entry(kind.into()).or_default() += 1
                }
            }
            drop(permit);
        });
        // Reap finished posts now and then so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let outcome = Arc::try_unwrap(outcome)
        .map_err(|_| anyhow::anyhow!("posts still running"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a post task panicked"))?;
    Ok(outcome)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seq_and_slot_from_an_event_frame() {
        // The shape ws-fanout sends (keys in serialization order, the event's own fields inside).
        let frame = r#"{"event":{"kind":"message_posted","seq":7,"content":"t123456|xxxx","room_id":"r"},"room_id":"r","seq":7,"type":"event"}"#;
        assert_eq!(read_event(frame), Some((7, 123_456)));
        assert_eq!(
            read_event(r#"{"room_id":"r","type":"resync","reason":"behind"}"#),
            None
        );
    }
}
