//! Chaos: the whole platform on a stack of its own (a three-node KRaft cluster, Redis, the
//! registry, FerretDB, ClickHouse, commands, query-api, ws-fanout and nginx, started by
//! `deploy/local/up`; a second commands instance and one process per projector started here),
//! under a steady post load through the entry while sockets read every room. One at a time,
//! each of them is killed with `kill -9` and started again: the leader of a loaded partition,
//! Redis, PostgreSQL, FerretDB, ClickHouse, the registry, each projector, the fan-out node and
//! a commands instance. At the end no acknowledged post is missing from the log or a read
//! model, none is there twice, every socket saw each room's events once and in order, and
//! `replay-tools verify all` finds the read models equal to the log. It prints those figures.
//!
//! It kills the machine's PostgreSQL, which every stack on the machine shares, so it cannot run
//! beside other tests: it is ignored by default and `deploy/local/test` runs it alone, after them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::{Client, Incoming};
use reqwest::{Method, StatusCode};
use schemas::DomainEvent;
use schemas::topics::ROOM_EVENTS;
use serde_json::{Value, json};
use test_support::{Api, PrivateStack, Service, User, free_port, unique_ident, wait_for};
use tokio::sync::Mutex;

const AUTHORS: usize = 4;
const READERS: usize = 3;
/// Each author's pause between two posts: about 20 posts a second in all, steady.
const PACE: Duration = Duration::from_millis(200);
/// How long a killed process stays dead before it is started again.
const DOWN: Duration = Duration::from_secs(3);
/// Posts acknowledged after a restart that show the platform writing again.
const PROGRESS: usize = 20;
const PROJECTORS: [&str; 4] = ["mongo", "redis", "clickhouse", "directory"];

/// What is killed, in order.
#[derive(Clone, Copy, Debug)]
enum Target {
    PartitionLeader,
    Redis,
    Postgres,
    Mongo,
    Clickhouse,
    Registry,
    Projector(&'static str),
    FanOut,
    Commands,
}

impl Target {
    fn all() -> Vec<Target> {
        let mut all = vec![
            Target::PartitionLeader,
            Target::Redis,
            Target::Postgres,
            Target::Mongo,
            Target::Clickhouse,
            Target::Registry,
        ];
        all.extend(PROJECTORS.map(Target::Projector));
        all.extend([Target::FanOut, Target::Commands]);
        all
    }

    fn name(self) -> String {
        match self {
            Target::PartitionLeader => "broker (partition leader)".into(),
            Target::Redis => "redis".into(),
            Target::Postgres => "postgresql".into(),
            Target::Mongo => "ferretdb".into(),
            Target::Clickhouse => "clickhouse".into(),
            Target::Registry => "registry".into(),
            Target::Projector(p) => format!("projector {p}"),
            Target::FanOut => "ws-fanout".into(),
            Target::Commands => "commands (2nd instance)".into(),
        }
    }
}

struct Platform {
    stack: PrivateStack,
    env: Vec<(String, String)>,
    brokers: String,
    entry: String,
    registry_url: String,
    clickhouse_url: String,
    pg_port: String,
    commands: Service,
    commands_ready: String,
    projectors: Vec<(&'static str, Service, String)>,
}

impl Platform {
    async fn start() -> anyhow::Result<Platform> {
        let port = || free_port().to_string();
        let kafka: Vec<String> = (0..3).map(|_| port()).collect();
        let controllers: Vec<String> = (0..3).map(|_| port()).collect();
        let name = unique_ident("chaos");
        let settings: Vec<(&str, String)> = vec![
            ("CHAT_KAFKA_NODES", "3".into()),
            ("CHAT_KAFKA_PORT", kafka[0].clone()),
            ("CHAT_KAFKA_PORTS", kafka.join(" ")),
            ("CHAT_KAFKA_CONTROLLER_PORTS", controllers.join(" ")),
            ("CHAT_REGISTRY_PORT", port()),
            ("CHAT_REDIS_PORT", port()),
            ("CHAT_REDIS_PREFIX", "chaos:".into()),
            ("CHAT_MONGO_PORT", port()),
            ("CHAT_CLICKHOUSE_HTTP_PORT", port()),
            ("CHAT_CLICKHOUSE_TCP_PORT", port()),
            ("CHAT_CLICKHOUSE_INTERSERVER_PORT", port()),
            ("CHAT_COMMANDS_PORT", port()),
            ("CHAT_QUERY_PORT", port()),
            ("CHAT_PROJECTIONS_PORT", port()),
            ("CHAT_WS_PORT", port()),
            ("CHAT_WS_EXTRA_PORTS", String::new()),
            ("CHAT_ENTRY_PORT", port()),
            ("CHAT_PG_DATABASE", name.clone()),
            ("CHAT_FERRETDB_PG_DATABASE", format!("{name}_ferretdb")),
            ("CHAT_REGISTRY_PG_DATABASE", format!("{name}_registry")),
        ];
        let stack = PrivateStack::new(&settings)?;
        let started = Instant::now();
        // Everything but the projections service: its projectors run here, one process each.
        stack.up(&[
            "postgres",
            "redis",
            "broker",
            "registry",
            "mongo",
            "clickhouse",
            "commands",
            "query-api",
            "ws-fanout",
            "nginx",
        ])?;
        let env = stack.env()?;
        let var = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .with_context(|| format!("{name} is not set"))
        };
        let spawn = |binary: &str, extra: Vec<(String, String)>| {
            let mut vars = env.clone();
            vars.extend(extra);
            Service::spawn(binary, vars)
        };
        let commands_port = free_port();
        let commands = spawn(
            "commands",
            vec![(
                "CHAT_COMMANDS_LISTEN".into(),
                format!("127.0.0.1:{commands_port}"),
            )],
        )?;
        let commands_ready = format!("http://127.0.0.1:{commands_port}/readyz");
        let mut projectors = Vec::new();
        for projector in PROJECTORS {
            let port = free_port();
            let service = spawn(
                "projections",
                vec![
                    ("CHAT_PROJECTORS".into(), projector.into()),
                    (
                        "CHAT_PROJECTIONS_LISTEN".into(),
                        format!("127.0.0.1:{port}"),
                    ),
                ],
            )?;
            projectors.push((
                projector,
                service,
                format!("http://127.0.0.1:{port}/readyz"),
            ));
        }
        commands
            .wait_ready(&commands_ready, Duration::from_secs(120))
            .await?;
        for (_, service, ready) in &projectors {
            service.wait_ready(ready, Duration::from_secs(120)).await?;
        }
        println!(
            "chaos: the stack is up in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(Platform {
            brokers: var("CHAT_KAFKA_BROKERS")?,
            entry: var("CHAT_ENTRY_URL")?,
            registry_url: var("CHAT_REGISTRY_URL")?,
            clickhouse_url: var("CHAT_CLICKHOUSE_URL")?,
            pg_port: var("CHAT_PG_URL")?
                .rsplit_once(':')
                .and_then(|(_, rest)| rest.split('/').next().map(str::to_string))
                .context("no port in CHAT_PG_URL")?,
            stack,
            env,
            commands,
            commands_ready,
            projectors,
        })
    }

    fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.entry.replacen("http", "ws", 1))
    }

    /// Kills `target` with SIGKILL, leaves it dead for [`DOWN`], starts it again and waits
    /// until it is ready.
    async fn kill_and_restart(&mut self, target: Target, room: &str) -> anyhow::Result<()> {
        match target {
            Target::PartitionLeader => {
                let partition = schemas::partition::partition_for(room, 12);
                let (leader, replicas) =
                    test_support::log::leader(&self.brokers, ROOM_EVENTS, partition)?;
                ensure!(
                    replicas == 3,
                    "partition {partition} has {replicas} replicas"
                );
                self.stack.kill9(&format!("broker-{leader}"))?;
                tokio::time::sleep(DOWN).await;
                self.up(&["broker"]).await
            }
            Target::Redis => self.kill_service("redis").await,
            Target::Mongo => self.kill_service("mongo").await,
            Target::Clickhouse => self.kill_service("clickhouse").await,
            Target::Registry => self.kill_service("registry").await,
            Target::FanOut => self.kill_service("ws-fanout").await,
            Target::Postgres => {
                test_support::signal(self.postmaster()?, "KILL")?;
                tokio::time::sleep(DOWN).await;
                // The killed postmaster's backends notice and exit; until they have, a new one
                // refuses to start on their shared memory.
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match self.stack.up(&["postgres"]) {
                        Ok(_) => return Ok(()),
                        Err(e) if Instant::now() > deadline => return Err(e),
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                }
            }
            Target::Projector(name) => {
                let (_, service, ready) = self
                    .projectors
                    .iter_mut()
                    .find(|(p, _, _)| *p == name)
                    .context("no such projector")?;
                service.kill9()?;
                tokio::time::sleep(DOWN).await;
                service.start()?;
                service.wait_ready(ready, Duration::from_secs(120)).await
            }
            Target::Commands => {
                self.commands.kill9()?;
                tokio::time::sleep(DOWN).await;
                self.commands.start()?;
                self.commands
                    .wait_ready(&self.commands_ready, Duration::from_secs(120))
                    .await
            }
        }
    }

    async fn kill_service(&self, service: &str) -> anyhow::Result<()> {
        self.stack.kill9(service)?;
        tokio::time::sleep(DOWN).await;
        self.up(&[service]).await
    }

    async fn up(&self, services: &[&str]) -> anyhow::Result<()> {
        self.stack
            .up(services)
            .map(|_| ())
            .map_err(|e| e.context(format!("restarting {services:?}")))
    }

    /// The pid of the machine's PostgreSQL (its postmaster), from its data directory.
    fn postmaster(&self) -> anyhow::Result<i32> {
        let output = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.pg_port, "-U", "postgres"])
            .args(["-d", "postgres", "-tAc", "SHOW data_directory"])
            .output()
            .context("running psql")?;
        ensure!(output.status.success(), "psql: {output:?}");
        let dir = String::from_utf8(output.stdout)?.trim().to_string();
        let pid_file = std::fs::read_to_string(format!("{dir}/postmaster.pid"))
            .with_context(|| format!("reading {dir}/postmaster.pid"))?;
        pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("no pid in postmaster.pid")
    }

    /// Stops everything and drops the stack's databases from the machine's PostgreSQL (which
    /// outlives the stack).
    fn clean_up(mut self) -> anyhow::Result<()> {
        self.commands.kill9()?;
        for (_, service, _) in &mut self.projectors {
            service.kill9()?;
        }
        self.stack.down(&[
            "nginx",
            "ws-fanout",
            "query-api",
            "commands",
            "clickhouse",
            "mongo",
            "registry",
            "broker",
            "redis",
        ])?;
        let database = |name: &str| {
            self.env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        for name in [
            "CHAT_PG_DATABASE",
            "CHAT_FERRETDB_PG_DATABASE",
            "CHAT_REGISTRY_PG_DATABASE",
        ] {
            let status = Command::new("psql")
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.pg_port,
                    "-U",
                    "postgres",
                ])
                .args(["-d", "postgres", "-c"])
                .arg(format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    database(name)
                ))
                .status()?;
            ensure!(status.success(), "dropping {}", database(name));
        }
        Ok(())
    }

    fn outputs(&self) -> String {
        let tail = |text: String| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        let mut out = vec![format!("commands (2nd):\n{}", tail(self.commands.output()))];
        for (name, service, _) in &self.projectors {
            out.push(format!("projector {name}:\n{}", tail(service.output())));
        }
        for service in ["commands", "query-api", "ws-fanout", "nginx"] {
            out.push(format!("{service}:\n{}", tail(self.stack.log(service))));
        }
        out.join("\n-----\n")
    }
}

/// When each post was acknowledged, for the figures: how long posting stood still.
struct Acks {
    origin: Instant,
    times: std::sync::Mutex<Vec<Duration>>,
}

impl Acks {
    fn record(&self) {
        let mut times = self.times.lock().expect("acks");
        times.push(self.origin.elapsed());
    }

    fn count(&self) -> usize {
        self.times.lock().expect("acks").len()
    }

    /// The longest time between `from` and `to` in which no post was acknowledged.
    fn longest_silence(&self, from: Instant, to: Instant) -> Duration {
        let (from, to) = (from - self.origin, to - self.origin);
        let times = self.times.lock().expect("acks");
        let mut last = from;
        let mut longest = Duration::ZERO;
        for &t in times.iter().filter(|t| **t > from && **t <= to) {
            longest = longest.max(t - last);
            last = t;
        }
        longest.max(to.saturating_sub(last))
    }
}

/// One author's acknowledged posts (`client_msg_id` -> `seq`) and what it met on the way.
#[derive(Default)]
struct Posted {
    answers: BTreeMap<String, i64>,
    retries: BTreeMap<String, usize>,
}

/// Posts to `room` every [`PACE`] until `stop`, each post retried with its `client_msg_id`
/// until it is acknowledged, as a client does: what the platform answers while a dependency is
/// away (503, 502 from the entry while a tier restarts, a dropped connection) is retried; any
/// other refusal fails.
async fn author(
    api: Api,
    user: User,
    room: String,
    tag: usize,
    stop: Arc<AtomicBool>,
    acks: Arc<Acks>,
) -> anyhow::Result<Posted> {
    let mut posted = Posted::default();
    let mut i = 0;
    while !stop.load(Ordering::Acquire) {
        let key = format!("chaos-{tag}-{i}");
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let why = match api.post(&user, &room, &key, &format!("post {i}")).await {
                Ok(a) if a.status == StatusCode::CREATED => {
                    posted
                        .answers
                        .insert(key.clone(), a.body["seq"].as_i64().unwrap_or(-1));
                    acks.record();
                    break;
                }
                Ok(a)
                    if [
                        StatusCode::SERVICE_UNAVAILABLE,
                        StatusCode::BAD_GATEWAY,
                        StatusCode::GATEWAY_TIMEOUT,
                        StatusCode::TOO_MANY_REQUESTS,
                    ]
                    .contains(&a.status) =>
                {
                    format!("{} {}", a.status.as_u16(), a.code())
                }
                Ok(a) => bail!("post {key}: {} {}", a.status, a.body),
                Err(_) => "no answer".to_string(),
            };
            *posted.retries.entry(why).or_default() += 1;
            ensure!(
                Instant::now() < deadline,
                "post {key} not accepted within 180 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        i += 1;
        tokio::time::sleep(PACE).await;
    }
    Ok(posted)
}

/// What one reader saw: every room's seqs in the order they came, and how often it connected.
struct Seen {
    seqs: BTreeMap<String, Vec<i64>>,
    connections: usize,
}

impl Seen {
    /// The last seq seen in `room` (0 before any).
    fn last(&self, room: &str) -> i64 {
        self.seqs[room].last().copied().unwrap_or(0)
    }

    /// Whether every room has reached its end, once the ends are known.
    async fn reached(&self, ends: &Mutex<Option<BTreeMap<String, i64>>>) -> bool {
        ends.lock()
            .await
            .as_ref()
            .is_some_and(|ends| ends.iter().all(|(room, end)| self.last(room) >= *end))
    }
}

/// Reads every room on one socket through the entry from seq 1 until each room's last seq in
/// `ends` (set at the end) is reached. When the socket goes (its node was killed, the entry
/// has no node for a moment, a token check is refused while Redis is away) it connects again
/// and resumes each room after the last seq it saw, as a client does. Any gap, duplicate,
/// reordering or resync fails.
async fn reader(
    url: String,
    token: String,
    rooms: Vec<String>,
    ends: Arc<Mutex<Option<BTreeMap<String, i64>>>>,
) -> anyhow::Result<Seen> {
    let mut seen = Seen {
        seqs: rooms.iter().map(|r| (r.clone(), Vec::new())).collect(),
        connections: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        ensure!(Instant::now() < deadline, "the reader ran for 30 minutes");
        if seen.reached(&ends).await {
            return Ok(seen);
        }
        let Ok(mut client) = Client::connect(&url, Some(&token)).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        seen.connections += 1;
        let mut subscribed = true;
        for room in &rooms {
            let since = seen.last(room);
            if client
                .send(json!({"type": "subscribe", "room_id": room, "since_seq": since}))
                .await
                .is_err()
            {
                subscribed = false;
                break;
            }
        }
        if !subscribed {
            continue;
        }
        loop {
            let frame = match client.next(Duration::from_millis(500)).await {
                Ok(Incoming::Json(v)) => v,
                Ok(Incoming::Closed(_)) => break,
                // Nothing for a moment: look at `ends` again.
                Err(e) if e.to_string().contains("no frame in time") => {
                    if seen.reached(&ends).await {
                        return Ok(seen);
                    }
                    continue;
                }
                Err(_) => break,
            };
            match frame["type"].as_str() {
                Some("event") => {
                    let room = frame["room_id"].as_str().unwrap_or_default();
                    let seqs = seen
                        .seqs
                        .get_mut(room)
                        .with_context(|| format!("an event of a room not subscribed: {frame}"))?;
                    let seq = frame["seq"].as_i64().unwrap_or(-1);
                    let expected = seqs.last().copied().unwrap_or(0) + 1;
                    ensure!(seq == expected, "expected seq {expected}, got {frame}");
                    seqs.push(seq);
                }
                Some("resync") => bail!("resync: {frame}"),
                // A refused subscribe while a dependency is away: connect and resume again.
                Some("error") => {
                    let code = frame["code"].as_str().unwrap_or_default();
                    ensure!(
                        code.contains("unavailable"),
                        "unexpected error frame: {frame}"
                    );
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    break;
                }
                _ => {}
            }
        }
    }
}

/// Every message of `room` that the history read model (through query-api) shows, by seq.
async fn history(api: &Api, user: &User, room: &str) -> anyhow::Result<Vec<i64>> {
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let page = api
            .call(
                Method::GET,
                &format!("/v1/rooms/{room}/messages?after={after}&limit=200"),
                Some(&user.access_token),
                None,
            )
            .await?;
        ensure!(page.status == StatusCode::OK, "history: {page:?}");
        let messages = page.body["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        seqs.extend(messages.iter().filter_map(|m| m["seq"].as_i64()));
        match page.body["next_after"].as_i64() {
            Some(next) if !messages.is_empty() => after = next,
            _ => return Ok(seqs),
        }
    }
}

/// `(rows, distinct event ids)` of posts per room in the analytics model.
async fn analytics(
    clickhouse: &str,
    rooms: &[String],
) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let list = rooms
        .iter()
        .map(|r| format!("'{r}'"))
        .collect::<Vec<_>>()
        .join(",");
    let query = format!(
        "SELECT room_id, count(), uniqExact(event_id) FROM chat.events \
         WHERE kind = 'message_posted' AND room_id IN ({list}) GROUP BY room_id FORMAT TSV"
    );
    let text = reqwest::Client::new()
        .post(clickhouse)
        .body(query)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if let [room, rows, ids] = cols[..] {
            counts.insert(room.to_string(), (rows.parse()?, ids.parse()?));
        }
    }
    Ok(counts)
}

#[tokio::test]
#[ignore = "kills the machine's PostgreSQL: deploy/local/test runs it alone, after the other tests"]
async fn killing_each_part_under_load_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut platform = Platform::start().await?;
    let api = Api::new(&platform.entry);
    let mut authors = Vec::new();
    let mut rooms = Vec::new();
    for _ in 0..AUTHORS {
        let user = api.user("chaos").await?;
        rooms.push(api.create_room(&user, "public").await?);
        authors.push(user);
    }
    let ends: Arc<Mutex<Option<BTreeMap<String, i64>>>> = Arc::new(Mutex::new(None));
    let mut readers = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..READERS {
        let user = api.user("watch").await?;
        tokens.push(user.access_token.clone());
        readers.push(tokio::spawn(reader(
            platform.ws_url(),
            user.access_token,
            rooms.clone(),
            ends.clone(),
        )));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Acks {
        origin: Instant::now(),
        times: std::sync::Mutex::new(Vec::new()),
    });
    let load: Vec<_> = authors
        .iter()
        .zip(&rooms)
        .enumerate()
        .map(|(tag, (user, room))| {
            tokio::spawn(author(
                api.clone(),
                user.clone(),
                room.clone(),
                tag,
                stop.clone(),
                acks.clone(),
            ))
        })
        .collect();
    let progress = |from: usize, what: String| {
        let acks = acks.clone();
        async move {
            wait_for(&what, Duration::from_secs(240), || async {
                (acks.count() >= from + PROGRESS).then_some(())
            })
            .await
        }
    };
    progress(0, "posting to start".into()).await?;

    // Kill each part in turn; after each, the platform must be writing again.
    let mut table = Vec::new();
    for target in Target::all() {
        let before = acks.count();
        let killed = Instant::now();
        if let Err(e) = platform.kill_and_restart(target, &rooms[0]).await {
            bail!("{}: {e:#}\n{}", target.name(), platform.outputs());
        }
        let back = Instant::now();
        let during = acks.count() - before;
        if let Err(e) = progress(acks.count(), format!("posting after {}", target.name())).await {
            bail!("{e}\n{}", platform.outputs());
        }
        let silence = acks.longest_silence(killed, Instant::now());
        println!(
            "chaos: {:<26} back in {:>5.1} s; {:>4} posts acknowledged meanwhile; longest pause in posting {:>5.1} s",
            target.name(),
            (back - killed).as_secs_f64(),
            during,
            silence.as_secs_f64(),
        );
        table.push((target.name(), back - killed, during, silence));
    }
    // What follows reads what the platform did; a failure shows the tiers' last words.
    let checked = async {
        stop.store(true, Ordering::Release);
        let mut answered = BTreeMap::new();
        let mut retries: BTreeMap<String, usize> = BTreeMap::new();
        for task in load {
            let posted = task
                .await?
                .map_err(|e| anyhow::anyhow!("{e}\n{}", platform.outputs()))?;
            answered.extend(posted.answers);
            for (why, n) in posted.retries {
                *retries.entry(why).or_default() += n;
            }
        }

        // The log: each room gap-free, each post once, each acknowledged post at its answered seq.
        let mut on_log = BTreeMap::new();
        let mut duplicates = 0;
        let mut last = BTreeMap::new();
        let mut posts_per_room = BTreeMap::new();
        for room in &rooms {
            let events = test_support::log::read_key(
                &platform.brokers,
                &platform.registry_url,
                ROOM_EVENTS,
                room,
            )
            .await?;
            let seqs: Vec<i64> = events
                .iter()
                .map(|e| e.envelope().seq.unwrap_or(-1))
                .collect();
            ensure!(
                seqs == (1..=events.len() as i64).collect::<Vec<_>>(),
                "room {room}'s log is not gap-free: {seqs:?}"
            );
            let mut posts = BTreeSet::new();
            for event in &events {
                if let DomainEvent::MessagePosted(p) = event {
                    let key = p.envelope.idempotency_key.clone().unwrap_or_default();
                    if on_log.insert(key, p.envelope.seq.unwrap_or(-1)).is_some() {
                        duplicates += 1;
                    }
                    posts.insert(p.envelope.seq.unwrap_or(-1));
                }
            }
            last.insert(room.clone(), events.len() as i64);
            posts_per_room.insert(room.clone(), posts);
        }
        let lost: Vec<_> = answered
            .iter()
            .filter(|(k, seq)| on_log.get(k.as_str()) != Some(*seq))
            .collect();
        ensure!(duplicates == 0, "{duplicates} posts are on the log twice");
        ensure!(
            lost.is_empty(),
            "acknowledged but not on the log at their seq: {lost:?}"
        );
        ensure!(
            on_log.len() == answered.len(),
            "{} posts on the log, {} acknowledged",
            on_log.len(),
            answered.len()
        );

        // The sockets: each room once, in order, to its end.
        *ends.lock().await = Some(last.clone());
        let mut connections = Vec::new();
        let mut broken_streams = 0;
        for task in readers {
            let seen = tokio::time::timeout(Duration::from_secs(180), task)
                .await
                .map_err(|_| {
                    anyhow::anyhow!("a socket never reached the end\n{}", platform.outputs())
                })??
                .map_err(|e| anyhow::anyhow!("{e}\n{}", platform.outputs()))?;
            for (room, seqs) in &seen.seqs {
                if *seqs != (1..=last[room]).collect::<Vec<_>>() {
                    eprintln!("a socket's stream of {room} is not 1..={}", last[room]);
                    broken_streams += 1;
                }
            }
            connections.push(seen.connections);
        }

        // The read models: every post once, once each projector has caught up. History reads
        // have a budget: wait on the newest message, then page once, waiting out any 429.
        let owner = &authors[0];
        let patient = api.clone().patient();
        let (mut history_missing, mut history_twice) = (0, 0);
        for (room, posts) in &posts_per_room {
            let expected: Vec<i64> = posts.iter().copied().collect();
            let newest = expected.last().copied().unwrap_or(0);
            wait_for(
                "history to show the last post",
                Duration::from_secs(180),
                || async {
                    let page = patient
                        .call(
                            Method::GET,
                            &format!("/v1/rooms/{room}/messages?limit=1"),
                            Some(&owner.access_token),
                            None,
                        )
                        .await
                        .ok()?;
                    (page.body["messages"][0]["seq"].as_i64()? >= newest).then_some(())
                },
            )
            .await?;
            let mut shown = history(&patient, owner, room).await?;
            shown.sort_unstable();
            history_missing += expected
                .iter()
                .filter(|s| shown.binary_search(s).is_err())
                .count();
            let listed = shown.len();
            shown.dedup();
            history_twice += listed - shown.len();
            // Nothing else either: every message shown is a post of the log.
            history_missing += shown
                .iter()
                .filter(|s| expected.binary_search(s).is_err())
                .count();
        }
        let counted = wait_for(
            "analytics to count every post",
            Duration::from_secs(180),
            || async {
                let counts = analytics(&platform.clickhouse_url, &rooms).await.ok()?;
                let all = posts_per_room.iter().all(|(room, posts)| {
                    counts
                        .get(room)
                        .is_some_and(|(_, ids)| *ids == posts.len() as u64)
                });
                all.then_some(counts)
            },
        )
        .await?;
        let analytics_twice: u64 = counted.values().map(|(rows, ids)| rows - ids).sum();
        let verify = Command::new(test_support::bin_dir().join("replay-tools"))
            .args(["verify", "all"])
            .envs(platform.env.iter().cloned())
            .output()?;
        let verified = String::from_utf8_lossy(&verify.stdout).to_string();

        let summary = json!({
            "acknowledged_posts": answered.len(),
            "lost": lost.len(),
            "duplicates_on_log": duplicates,
            "history_missing_or_extra": history_missing,
            "duplicates_in_history": history_twice,
            "duplicates_in_analytics": analytics_twice,
            "socket_streams": READERS * rooms.len(),
            "socket_streams_broken": broken_streams,
            "socket_connections": connections,
            "retried_answers": retries,
            "faults": table.iter().map(|(name, back, during, silence)| json!({
                "killed": name,
                "back_in_s": back.as_secs_f64(),
                "acknowledged_meanwhile": during,
                "longest_pause_s": silence.as_secs_f64(),
            })).collect::<Vec<Value>>(),
            "verify": verified.lines().collect::<Vec<_>>(),
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("chaos: {}", serde_json::to_string_pretty(&summary)?);
        ensure!(
            broken_streams == 0,
            "{broken_streams} socket streams are not each room once, in order"
        );
        ensure!(
            history_missing == 0 && history_twice == 0,
            "history: {history_missing} posts missing or extra, {history_twice} shown twice"
        );
        ensure!(
            analytics_twice == 0,
            "analytics: {analytics_twice} posts counted twice"
        );
        // The sockets reconnected with their tokens in the URL while the node was away: the
        // entry's error log must not hold them.
        let entry_errors = platform.stack.log("nginx-error");
        ensure!(
            !tokens.iter().any(|t| entry_errors.contains(t.as_str())),
            "the entry's error log holds an access token"
        );
        ensure!(
            verify.status.success(),
            "verify all:\n{verified}{}",
            String::from_utf8_lossy(&verify.stderr)
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = checked {
        bail!("{e:#}\n{}", platform.outputs());
    }
    platform.clean_up()
}
