//! The load generator every delivery benchmark runs on: sockets in rooms, senders posting on a
//! fixed schedule, every delivery's latency from its send slot to its receipt.
//!
//! Open loop: a message is due at its slot whether or not earlier ones were answered, and its
//! latency counts from that slot, so a stalled server cannot hide its stall by slowing the
//! generator down. Each message's content carries its slot (`t<slot>|padding`); every receiving
//! socket records `receipt - slot` in the histogram of the phase the slot belongs to, and in a
//! per-second timeline. The load is counted as deliveries (messages times the room's sockets).
//! The receiving sockets live in worker processes (`receivers`), so a run is not bound by one
//! process's open files; this process posts.
//!
//! The same generator drives both targets: ours (HTTP or socket `send` into the commands tier,
//! event frames from ws-fanout nodes) and the peer (Socket.io `send`, `event` broadcasts), so
//! their numbers come from the same schedule, rooms and sockets.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Flavor};
use crate::frames::read_answer;
use crate::receivers::{self, Receivers};
use crate::{floor, report};

/// A socket server of the run: a ws-fanout node of ours or a node of the peer.
#[derive(Clone, Debug)]
pub struct Node {
    pub url: String,
    pub pid: Option<u32>,
}

/// Where the load goes.
pub enum Target {
    /// The platform: the commands tier takes the posts, ws-fanout nodes serve the sockets
    /// (spread over them in turn).
    Ours {
        commands_url: String,
        nodes: Vec<Node>,
        brokers: String,
        partitions: i32,
    },
    /// The Socket.io peer's nodes (`ws://host:port`), sockets spread over them.
    Peer { nodes: Vec<Node> },
}

impl Target {
    /// Ours, as `bench/run` started it (the stack's one ws-fanout node).
    pub fn ours() -> anyhow::Result<Self> {
        Ok(Target::Ours {
            commands_url: report::stack_env("CHAT_COMMANDS_URL")?,
            nodes: vec![Node {
                url: format!(
                    "{}/v1/ws",
                    report::stack_env("CHAT_WS_URL")?.replacen("http", "ws", 1)
                ),
                pid: report::stack_pid("ws-fanout"),
            }],
            brokers: report::stack_env("CHAT_KAFKA_BROKERS")?,
            partitions: report::room_partitions(),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Target::Ours { .. } => "ours",
            Target::Peer { .. } => "peer",
        }
    }

    fn flavor(&self) -> Flavor {
        match self {
            Target::Ours { .. } => Flavor::Ours,
            Target::Peer { .. } => Flavor::Peer,
        }
    }

    /// The processes whose CPU and RSS each phase reports (the generator is added to them).
    fn processes(&self) -> Vec<(String, Option<u32>)> {
        let redis = ("redis".to_string(), report::find_pid("redis-server"));
        match self {
            Target::Ours { nodes, .. } => nodes
                .iter()
                .enumerate()
                .map(|(i, node)| match i {
                    0 => ("ws-fanout".to_string(), node.pid),
                    _ => (format!("ws-fanout-{}", i + 1), node.pid),
                })
                .chain(
                    [
                        "commands",
                        "broker-1",
                        "projections",
                        "query-api",
                        "mongo",
                        "clickhouse",
                        "registry",
                        "nginx",
                        "signaling",
                        "janus",
                        "coturn",
                    ]
                    .iter()
                    .map(|p| (p.to_string(), report::stack_pid(p))),
                )
                .chain(std::iter::once(redis))
                .collect(),
            Target::Peer { nodes } => nodes
                .iter()
                .enumerate()
                .map(|(i, node)| (format!("peer-node-{}", i + 1), node.pid))
                .chain(std::iter::once(redis))
                .collect(),
        }
    }

    fn nodes(&self) -> &[Node] {
        match self {
            Target::Ours { nodes, .. } | Target::Peer { nodes } => nodes,
        }
    }
}

/// How senders post.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SendOver {
    /// `POST /v1/rooms/{id}/messages` (ours only).
    Http,
    /// A `send` frame on a socket of the sender's own (both targets).
    Socket,
}

/// A stretch of the schedule at one rate.
#[derive(Clone, Debug)]
pub struct Phase {
    pub label: String,
    pub per_minute: u64,
    /// Posted but not measured, at the start of the phase.
    pub warmup_secs: u64,
    pub secs: u64,
    /// Measure the broker's own produce-to-consume latency at this rate before the phase's
    /// group (ours only: the peer has no log).
    pub floor: bool,
    /// Let the deliveries in flight arrive after this phase before the next starts; phases
    /// without it run back to back on one schedule (a burst, a soak's minutes).
    pub drain: bool,
}

/// What one run asks of the generator.
pub struct Plan {
    /// Receiving sockets per room (its length is the number of rooms).
    pub room_sizes: Vec<usize>,
    pub senders_per_room: usize,
    pub send_over: SendOver,
    pub content_bytes: usize,
    /// Posts in flight at most; a slot that finds none free is counted as shed.
    pub max_in_flight: usize,
    /// Connections being set up at once, over all receiving workers.
    pub connect_concurrency: usize,
    pub floor_secs: u64,
    /// Seconds the open sockets sit idle (no posts) while every process's CPU is sampled,
    /// before the phases; 0 skips it.
    pub idle_secs: u64,
    pub phases: Vec<Phase>,
}

/// Posts of one phase: how many were taken, refused, or not sent.
struct Posting {
    answer_latency: Histogram<u64>,
    accepted_in_window: u64,
    expected_deliveries: u64,
    shed: u64,
    errors: BTreeMap<String, u64>,
}

/// One phase: the slots it posts and measures (the receiving workers measure its window).
struct Step {
    /// Every slot of the phase, warm-up included (posting is accounted here).
    span: Range<u64>,
    /// Slots whose deliveries are measured: after the warm-up.
    window: Range<u64>,
    posting: Mutex<Posting>,
}

impl Step {
    fn new(span: Range<u64>, window: Range<u64>) -> Self {
        Step {
            span,
            window,
            posting: Mutex::new(Posting {
                answer_latency: report::histogram(3),
                accepted_in_window: 0,
                expected_deliveries: 0,
                shed: 0,
                errors: BTreeMap::new(),
            }),
        }
    }

    /// A post's outcome: `Ok(deliveries it should make)` or `Err(error code)`.
    fn answered(&self, slot: u64, now: u64, outcome: Result<u64, String>) {
        let mut p = lock(&self.posting);
        match outcome {
            Ok(subscribers) if self.window.contains(&slot) => {
                p.accepted_in_window += 1;
                p.expected_deliveries += subscribers;
                p.answer_latency.saturating_record(now.saturating_sub(slot));
            }
            Ok(_) => {}
            Err(code) => *p.errors.entry(code).or_default() += 1,
        }
    }
}

/// What the senders add to, for the whole run.
struct Tally {
    /// The run's origin: slots are microseconds since it.
    base: Instant,
    steps: std::sync::RwLock<Vec<Arc<Step>>>,
    /// Sender sockets the server closed.
    closes: Mutex<BTreeMap<String, u64>>,
    /// Posts not answered yet.
    in_flight: AtomicI64,
}

impl Tally {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    fn posted(&self, slot: u64) -> Option<Arc<Step>> {
        let steps = self.steps.read().unwrap_or_else(|p| p.into_inner());
        steps.iter().rev().find(|s| s.span.contains(&slot)).cloned()
    }

    fn closed(&self, how: String) {
        *lock(&self.closes).entry(how).or_default() += 1;
    }
}

/// A room of the run: its id, its posting members and how many sockets receive its events.
struct Room {
    id: String,
    /// Access tokens of the posting members (ours), or one empty entry per sender (the peer).
    senders: Vec<String>,
    receivers: u64,
}

/// How a run's messages leave the generator.
enum Senders {
    /// HTTP posts (ours): one client for the whole run, so its pooled connections carry over
    /// from one phase to the next.
    Http {
        client: reqwest::Client,
        commands_url: String,
    },
    /// Per room, per posting member: the channel to the writer of that sender's own socket
    /// (its reader takes the answers).
    Sockets(Vec<Vec<mpsc::Sender<String>>>),
}

async fn rooms(target: &Target, plan: &Plan) -> anyhow::Result<Vec<Room>> {
    let per_room = plan.senders_per_room.max(1);
    let count = plan.room_sizes.len();
    let Target::Ours { commands_url, .. } = target else {
        let run = uuid::Uuid::now_v7().simple().to_string();
        return Ok((0..count)
            .map(|k| Room {
                id: format!("peer-{run}-{k}"),
                senders: vec![String::new(); per_room],
                receivers: 0,
            })
            .collect());
    };
    let users: Vec<test_support::User> = futures::stream::iter(0..count * per_room)
        .map(|_| {
            let api = test_support::Api::new(commands_url.clone());
            async move { api.user("load").await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let api = test_support::Api::new(commands_url.clone());
    let mut rooms = Vec::with_capacity(count);
    for members in users.chunks(per_room) {
        let id = api.create_room(&members[0], "public").await?;
        for member in &members[1..] {
            let joined = api.join(member, &id).await?;
            anyhow::ensure!(joined.status.is_success(), "join: {}", joined.body);
        }
        rooms.push(Room {
            id,
            senders: members.iter().map(|m| m.access_token.clone()).collect(),
            receivers: 0,
        });
    }
    Ok(rooms)
}

/// The URL the `index`-th socket of `target` connects to (nodes in turn): ours with the
/// `token`, the peer's as is.
fn socket_url(target: &Target, token: &str, index: usize) -> String {
    let nodes = target.nodes();
    let url = nodes
        .get(index % nodes.len().max(1))
        .map_or("", |n| n.url.as_str());
    match target {
        Target::Ours { .. } => format!("{url}?access_token={token}"),
        Target::Peer { .. } => url.to_string(),
    }
}

/// Opens every sender's own socket and starts its writer and answer reader.
async fn open_senders(
    target: &Target,
    rooms: &[Room],
    plan: &Plan,
    tally: &Arc<Tally>,
    stopped: &watch::Receiver<bool>,
) -> anyhow::Result<(Senders, Vec<tokio::task::JoinHandle<()>>)> {
    let receivers: Vec<u64> = rooms.iter().map(|r| r.receivers).collect();
    let receivers = Arc::new(receivers);
    let opened = client::open_all(
        target.flavor(),
        rooms.iter().enumerate().flat_map(|(k, room)| {
            room.senders
                .iter()
                .enumerate()
                .map(move |(j, token)| ((k, j), socket_url(target, token, k + j), None))
        }),
        plan.connect_concurrency,
    )
    .await;
    if let Some(e) = opened.first_error {
        anyhow::bail!("{} sender sockets failed: {e}", opened.failures);
    }
    let mut senders: Vec<Vec<Option<mpsc::Sender<String>>>> = rooms
        .iter()
        .map(|r| r.senders.iter().map(|_| None).collect())
        .collect();
    let mut tasks = Vec::new();
    for ((k, j), socket) in opened.sockets {
        let (mut sink, mut stream) = socket.split();
        let (frames, mut outgoing) = mpsc::channel::<String>(1024);
        tasks.push(tokio::spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                if sink.send(Message::text(frame)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        }));
        let (tally, receivers, pong, mut stop) = (
            tally.clone(),
            receivers.clone(),
            frames.clone(),
            stopped.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = stop.changed() => break,
                    frame = stream.next() => frame,
                };
                let Some(Ok(Message::Text(text))) = frame else {
                    if matches!(frame, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                        tally.closed("sender".into());
                        break;
                    }
                    continue;
                };
                if text.as_str() == "2" {
                    let _ = pong.try_send("3".into());
                    continue;
                }
                let Some((slot, room, outcome)) = read_answer(text.as_str()) else {
                    continue;
                };
                tally.in_flight.fetch_sub(1, Ordering::Relaxed);
                if let Some(step) = tally.posted(slot) {
                    let subscribers = receivers.get(room).copied().unwrap_or(0);
                    step.answered(slot, tally.now_us(), outcome.map(|()| subscribers));
                }
            }
        }));
        senders[k][j] = Some(frames);
    }
    Ok((
        Senders::Sockets(
            senders
                .into_iter()
                .map(|r| r.into_iter().flatten().collect())
                .collect(),
        ),
        tasks,
    ))
}

/// Runs `plan` against `target`; the JSON of the run, one entry per phase.
pub async fn run(target: &Target, plan: &Plan) -> anyhow::Result<Value> {
    let commands_url = match (target, plan.send_over) {
        (Target::Ours { commands_url, .. }, _) => commands_url.clone(),
        (Target::Peer { .. }, SendOver::Socket) => String::new(),
        (Target::Peer { .. }, SendOver::Http) => {
            anyhow::bail!("the peer takes messages over its sockets only")
        }
    };
    let flavor = target.flavor();
    let setup = Instant::now();
    let mut rooms = rooms(target, plan).await?;
    let requested: usize = plan.room_sizes.iter().sum();
    println!(
        "[{}] {} rooms, {} senders set up in {:.1} s; opening {requested} sockets from {} worker process(es) on {} node(s) ...",
        target.name(),
        rooms.len(),
        rooms.len() * plan.senders_per_room.max(1),
        setup.elapsed().as_secs_f64(),
        requested.div_ceil(receivers::SOCKETS_PER_PROCESS),
        target.nodes().len(),
    );
    let targets = plan
        .room_sizes
        .iter()
        .enumerate()
        .flat_map(|(k, &size)| (0..size).map(move |j| (k, j)))
        .enumerate()
        .map(|(i, (k, j))| {
            let room = &rooms[k];
            let token = &room.senders[j % room.senders.len()];
            (k, socket_url(target, token, i), Some(room.id.clone()))
        })
        .collect::<Vec<_>>();
    // The run's origin, on the monotonic clock here and the wall clock in the workers.
    let base = Instant::now();
    let origin_unix_us = receivers::unix_us();
    let (mut receivers, opened) =
        Receivers::start(flavor, origin_unix_us, targets, plan.connect_concurrency).await?;
    if let Some(e) = &opened.first_error {
        eprintln!("socket failed: {e}");
    }
    for (&k, &n) in &opened.per_room {
        if let Some(room) = rooms.get_mut(k) {
            room.receivers += n;
        }
    }
    let connect_ms = report::latency_ms(&opened.connect);
    println!(
        "[{}] {} sockets open ({} failed); connect+subscribe {}",
        target.name(),
        opened.held,
        opened.failures,
        summary(&connect_ms)
    );

    let tally = Arc::new(Tally {
        base,
        steps: std::sync::RwLock::new(Vec::new()),
        closes: Mutex::new(BTreeMap::new()),
        in_flight: AtomicI64::new(0),
    });
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    let senders = match plan.send_over {
        SendOver::Socket => {
            let (senders, sender_tasks) =
                open_senders(target, &rooms, plan, &tally, &stopped).await?;
            tasks.extend(sender_tasks);
            senders
        }
        SendOver::Http => Senders::Http {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(plan.max_in_flight)
                .timeout(Duration::from_secs(30))
                .build()?,
            commands_url,
        },
    };
    let mut generator = vec![std::process::id()];
    generator.extend(&receivers.pids);
    let idle = idle(target, plan, &tally, &generator, opened.held).await;

    let mut results = Vec::new();
    let mut first_start = None;
    for group in plan.phases.split_inclusive(|p| p.drain) {
        let mut floors = BTreeMap::new();
        if let Target::Ours {
            brokers,
            partitions,
            ..
        } = target
        {
            for phase in group.iter().filter(|p| p.floor && plan.floor_secs > 0) {
                if floors.contains_key(&phase.per_minute) {
                    continue;
                }
                let floor = floor::measure(
                    brokers,
                    *partitions,
                    phase.per_minute as f64 / 60.0,
                    Duration::from_secs(3),
                    Duration::from_secs(plan.floor_secs),
                    plan.content_bytes,
                )
                .await?;
                println!(
                    "[ours] broker floor at {}/min: produce-to-consume {}",
                    phase.per_minute,
                    summary(&floor.produce_to_consume_ms)
                );
                floors.insert(phase.per_minute, floor.json());
            }
        }
        // The group's phases back to back on one schedule; the workers measure each window
        // (numbered in order, as `results` is).
        let mut at = tally.now_us() + 100_000;
        first_start.get_or_insert(at);
        let mut steps = Vec::new();
        for phase in group {
            let end = at + phase.secs.saturating_add(phase.warmup_secs) * 1_000_000;
            let step = Arc::new(Step::new(at..end, at + phase.warmup_secs * 1_000_000..end));
            at = end;
            receivers.measure(&step.window).await?;
            tally
                .steps
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(step.clone());
            steps.push(step);
        }
        let sampler = tokio::spawn(sample(
            base,
            target.processes(),
            generator.clone(),
            steps.iter().map(|s| s.window.clone()).collect(),
        ));
        for (phase, step) in group.iter().zip(&steps) {
            println!(
                "[{}] {}: {} messages/minute for {} s",
                target.name(),
                phase.label,
                phase.per_minute,
                phase.secs
            );
            post(plan, target, &rooms, &senders, phase, step, &tally).await;
        }
        let usage = sampler.await.unwrap_or_default();
        let windows = results.len()..results.len() + steps.len();
        drain(&tally, &receivers, windows.clone(), &steps).await;
        for ((phase, step), processes) in group.iter().zip(&steps).zip(usage) {
            results.push(phase_result(
                phase,
                step,
                processes,
                floors.get(&phase.per_minute),
            ));
        }
        for (i, result) in results[windows.clone()].iter_mut().enumerate() {
            set_deliveries(
                result,
                receivers.delivered(windows.start + i..windows.start + i + 1),
            );
            println!(
                "[{}] {}: {} of {} deliveries ({:.0}/s), {:.0} posts/s accepted, shed {}, errors {}",
                target.name(),
                result["label"].as_str().unwrap_or(""),
                result["deliveries"],
                result["deliveries_expected"],
                result["deliveries_per_sec"].as_f64().unwrap_or(0.0),
                result["accepted_per_sec"].as_f64().unwrap_or(0.0),
                result["shed"],
                result["post_errors"],
            );
        }
    }
    let _ = stop.send(true);
    // The senders' writers end when their channels close.
    drop(senders);
    for task in tasks {
        let _ = task.await;
    }
    // The workers hand their histograms over when stopped: the figures are complete only now.
    let received = receivers.finish().await?;
    for (result, (delivered, latency)) in results.iter_mut().zip(&received.windows) {
        set_deliveries(result, *delivered);
        result["delivery_ms"] = report::latency_ms(latency);
        println!(
            "[{}] {}: delivery {}",
            target.name(),
            result["label"].as_str().unwrap_or(""),
            summary(&result["delivery_ms"])
        );
    }
    let origin = first_start.unwrap_or(0) / 1_000_000;
    let timeline: Vec<Value> = received
        .timeline
        .iter()
        .map(|(second, h)| {
            json!({
                "second": second.saturating_sub(origin),
                "deliveries": h.len(),
                "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
                "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
            })
        })
        .collect();
    let mut closes = received.closes;
    for (how, n) in lock(&tally.closes).iter() {
        *closes.entry(how.clone()).or_default() += n;
    }
    let mut sizes = plan.room_sizes.clone();
    sizes.sort_unstable();
    Ok(json!({
        "target": target.name(),
        "sockets": requested,
        "sockets_open": opened.held,
        "connect_failures": opened.failures,
        "connect_ms": connect_ms,
        "nodes": target.nodes().len(),
        "receiving_processes": generator.len() - 1,
        "rooms": rooms.len(),
        "room_sizes": {
            "min": sizes.first(),
            "median": sizes.get(sizes.len() / 2),
            "max": sizes.last(),
        },
        "senders": rooms.len() * plan.senders_per_room.max(1),
        "send_over": plan.send_over,
        "content_bytes": plan.content_bytes,
        "idle": idle,
        "phases": results,
        "out_of_order": match target {
            Target::Ours { .. } => json!(received.out_of_order),
            Target::Peer { .. } => Value::Null,
        },
        "resyncs": received.resyncs,
        "sockets_closed": closes,
        "timeline": timeline,
    }))
}

/// What the stack costs with every socket open and nothing posted: a window of `idle_secs`
/// after the connections settled (pings, presence refreshes, the log tail's and the
/// projectors' empty fetches go on).
async fn idle(
    target: &Target,
    plan: &Plan,
    tally: &Tally,
    generator: &[u32],
    sockets: usize,
) -> Value {
    if plan.idle_secs == 0 {
        return Value::Null;
    }
    let start = tally.now_us() + IDLE_SETTLE.as_micros() as u64;
    let window = start..start + plan.idle_secs * 1_000_000;
    let processes = sample(
        tally.base,
        target.processes(),
        generator.to_vec(),
        vec![window],
    )
    .await
    .pop()
    .unwrap_or_default();
    println!(
        "[{}] idle with {sockets} sockets for {} s: {}",
        target.name(),
        plan.idle_secs,
        processes
    );
    json!({"seconds": plan.idle_secs, "sockets": sockets, "processes": processes})
}

/// How long the connections' own set-up (presence writes, subscriptions) is left to finish
/// before the idle window starts.
const IDLE_SETTLE: Duration = Duration::from_secs(5);

fn phase_result(phase: &Phase, step: &Step, processes: Value, floor: Option<&Value>) -> Value {
    let p = lock(&step.posting);
    json!({
        "label": phase.label,
        "messages_per_minute": phase.per_minute,
        "measured_seconds": phase.secs,
        "accepted_per_sec": p.accepted_in_window as f64 / phase.secs.max(1) as f64,
        "shed": p.shed,
        "post_errors": p.errors,
        "post_answer_ms": report::latency_ms(&p.answer_latency),
        "deliveries_expected": p.expected_deliveries,
        "broker_floor": floor,
        "processes": processes,
    })
}

/// A phase's delivery counts, from what the receiving workers reported.
fn set_deliveries(result: &mut Value, delivered: u64) {
    let secs = result["measured_seconds"].as_u64().unwrap_or(1).max(1) as f64;
    let expected = result["deliveries_expected"].as_u64().unwrap_or(0);
    result["deliveries"] = json!(delivered);
    result["deliveries_per_sec"] = json!(delivered as f64 / secs);
    result["deliveries_missing"] = json!(expected.saturating_sub(delivered));
}

/// CPU and RSS of the target's processes and of the generator (this process and its receiving
/// workers, summed) over each measured window.
async fn sample(
    base: Instant,
    processes: Vec<(String, Option<u32>)>,
    generator: Vec<u32>,
    windows: Vec<Range<u64>>,
) -> Vec<Value> {
    let read = || -> Vec<(String, Option<(f64, u64)>)> {
        processes
            .iter()
            .map(|(name, pid)| (name.clone(), pid.and_then(report::proc_stats)))
            .chain(std::iter::once((
                "load-generator".to_string(),
                generator
                    .iter()
                    .map(|&pid| report::proc_stats(pid))
                    .try_fold((0.0, 0), |(cpu, rss), s| s.map(|(c, r)| (cpu + c, rss + r))),
            )))
            .collect()
    };
    let at = |us: u64| base + Duration::from_micros(us);
    let mut usage = Vec::new();
    for window in windows {
        tokio::time::sleep_until(at(window.start).into()).await;
        let before = read();
        let (postgres_before, machine_before) = (
            report::proc_group_stats("postgres"),
            report::machine_busy_seconds(),
        );
        tokio::time::sleep_until(at(window.end).into()).await;
        let after = read();
        let (postgres_after, machine_after) = (
            report::proc_group_stats("postgres"),
            report::machine_busy_seconds(),
        );
        let seconds = (window.end - window.start) as f64 / 1e6;
        let mut phase: serde_json::Map<_, _> = before
            .iter()
            .zip(&after)
            .filter_map(|((name, b), (_, a))| Some((name.clone(), report::usage(*b, *a, seconds)?)))
            .collect();
        // PostgreSQL's backends that lived through the window, summed (the peer uses none).
        let (mut b, mut a) = ((0.0, 0), (0.0, 0));
        for (pid, before) in &postgres_before {
            if let Some(after) = postgres_after.get(pid) {
                b = (b.0 + before.0, b.1 + before.1);
                a = (a.0 + after.0, a.1 + after.1);
            }
        }
        if b.1 > 0
            && let Some(v) = report::usage(Some(b), Some(a), seconds)
        {
            phase.insert("postgres".into(), v);
        }
        // The whole machine, every process (% of one core: 200 is both cores busy).
        if let (Some(b), Some(a)) = (machine_before, machine_after) {
            phase.insert(
                MACHINE.into(),
                json!({"cpu_percent": ((a - b) / seconds * 1000.0).round() / 10.0}),
            );
        }
        usage.push(phase.into());
    }
    usage
}

/// The entry of a phase's processes that is the whole machine, not one process.
pub const MACHINE: &str = "machine";

/// Waits until every delivery of `steps` (the receivers' `windows`) arrived, or none arrived
/// for 10 s.
async fn drain(tally: &Tally, receivers: &Receivers, windows: Range<usize>, steps: &[Arc<Step>]) {
    // Socket sends answered late still add to what is expected: let them land first.
    let answers_due = Instant::now() + Duration::from_secs(30);
    while tally.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < answers_due {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expected: u64 = steps
        .iter()
        .map(|s| lock(&s.posting).expected_deliveries)
        .sum();
    let mut last = (0, Instant::now());
    loop {
        let now = receivers.delivered(windows.clone());
        if now >= expected {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The open-loop poster for one phase: one post per slot, round-robin over rooms and each
/// room's senders.
async fn post(
    plan: &Plan,
    target: &Target,
    rooms: &[Room],
    senders: &Senders,
    phase: &Phase,
    step: &Arc<Step>,
    tally: &Arc<Tally>,
) {
    let rate = phase.per_minute as f64 / 60.0;
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let start = tally.base + Duration::from_micros(step.span.start);
    let end = tally.base + Duration::from_micros(step.span.end);
    let padding = "x".repeat(plan.content_bytes.saturating_sub(16));
    let max_in_flight = plan.max_in_flight.max(1) as i64;
    let mut n: u32 = 0;
    loop {
        let due = start + period * n;
        if due >= end {
            break;
        }
        let k = n as usize % rooms.len();
        let room = &rooms[k];
        let j = (n as usize / rooms.len()) % room.senders.len();
        n += 1;
        tokio::time::sleep_until(due.into()).await;
        if tally.in_flight.load(Ordering::Relaxed) >= max_in_flight {
            lock(&step.posting).shed += 1;
            continue;
        }
        let slot = due.duration_since(tally.base).as_micros() as u64;
        let content = format!("t{slot}|{padding}");
        let reference = format!("{slot}-{k}-{n}");
        let (client, commands_url) = match senders {
            Senders::Http {
                client,
                commands_url,
            } => (client, commands_url),
            Senders::Sockets(sockets) => {
                let frame = match target {
                    Target::Ours { .. } => json!({
                        "type": "send", "room_id": room.id, "client_msg_id": reference, "content": content,
                    })
                    .to_string(),
                    // With an acknowledgement id (`42<id>[..]`), so the peer answers `43<id>[..]`.
                    Target::Peer { .. } => format!(
                        "42{n}{}",
                        json!(["send", {"room": room.id, "content": content, "ref": reference}])
                    ),
                };
                let sent = sockets
                    .get(k)
                    .and_then(|s| s.get(j))
                    .is_some_and(|s| s.try_send(frame).is_ok());
                if sent {
                    tally.in_flight.fetch_add(1, Ordering::Relaxed);
                } else {
                    lock(&step.posting).shed += 1;
                }
                continue;
            }
        };
        let request = client
            .post(format!("{commands_url}/v1/rooms/{}/messages", room.id))
            .bearer_auth(&room.senders[j])
            .json(&json!({"client_msg_id": reference, "content": content}));
        let (tally, step, subscribers) = (tally.clone(), step.clone(), room.receivers);
        tally.in_flight.fetch_add(1, Ordering::Relaxed);
        // Detached: posts still running at the phase's end finish during the next one (its
        // schedule must not wait for them); the drain waits for `in_flight` to reach zero.
        tokio::spawn(async move {
            let answer = request.send().await;
            let outcome = match answer {
                Ok(r) if r.status().as_u16() == 201 => Ok(subscribers),
                Ok(r) => Err(r.status().as_u16().to_string()),
                Err(e) if e.is_timeout() => Err("timeout".into()),
                Err(_) => Err("connection".into()),
            };
            step.answered(slot, tally.now_us(), outcome);
            tally.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

pub fn summary(v: &Value) -> String {
    format!(
        "p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
        v["p50"], v["p95"], v["p99"], v["max"]
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
