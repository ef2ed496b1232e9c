//! Losing a broker: on a three-node KRaft cluster (replication 3, min.insync.replicas 2), the
//! leader of the room's partition is killed with `kill -9` while posts stream in. Nothing
//! acknowledged may be lost, the room's seq stays gap-free, every socket sees every event once
//! and in order, and `replay-tools verify all` finds the read models equal to the log.
//!
//! The whole platform runs privately on that cluster: commands, projections, query-api and a
//! fan-out node, with their own group, database, schema and key prefix in the shared stores.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Client, Incoming};
use schemas::DomainEvent;
use schemas::topics::ROOM_EVENTS;
use serde_json::json;
use test_support::{Api, PrivateStack, Service, env, free_port, unique, unique_ident, wait_for};

const AUTHORS: usize = 4;
const POSTS_EACH: usize = 150;
const READERS: usize = 3;

struct Platform {
    stack: PrivateStack,
    brokers: String,
    settings: Vec<(String, String)>,
    services: Vec<Service>,
}

impl Platform {
    /// The cluster, then every tier on it.
    async fn start() -> anyhow::Result<(Platform, Api, String)> {
        let ports: Vec<String> = (0..3).map(|_| free_port().to_string()).collect();
        let controllers: Vec<String> = (0..3).map(|_| free_port().to_string()).collect();
        let stack = PrivateStack::new(&[
            ("CHAT_KAFKA_NODES", "3".to_string()),
            ("CHAT_KAFKA_PORT", ports[0].clone()),
            ("CHAT_KAFKA_PORTS", ports.join(" ")),
            ("CHAT_KAFKA_CONTROLLER_PORTS", controllers.join(" ")),
        ])?;
        stack.up(&["broker"])?;
        let brokers = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let name = unique_ident("loss");
        let settings: Vec<(String, String)> = [
            ("CHAT_KAFKA_BROKERS", brokers.clone()),
            ("CHAT_REGISTRY_URL", env::registry_url()),
            ("CHAT_PG_URL", env::pg_url()),
            ("CHAT_REDIS_URL", env::redis_url()),
            ("CHAT_REDIS_PREFIX", format!("{name}:")),
            ("CHAT_MONGO_URL", env::mongo_url()),
            ("CHAT_MONGO_DB", name.clone()),
            ("CHAT_CLICKHOUSE_URL", env::clickhouse_url()),
            ("CHAT_CLICKHOUSE_DB", name.clone()),
            ("CHAT_DIRECTORY_PG_SCHEMA", name.clone()),
            ("RUST_LOG", "info".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut platform = Platform {
            stack,
            brokers,
            settings,
            services: Vec::new(),
        };
        let commands = free_port();
        let commands_url = format!("http://127.0.0.1:{commands}");
        let query = free_port();
        let query_url = format!("http://127.0.0.1:{query}");
        platform.spawn(
            "commands",
            &[
                ("CHAT_COMMANDS_LISTEN", format!("127.0.0.1:{commands}")),
                ("CHAT_COMMANDS_PG_SCHEMA", format!("{name}_identity")),
                ("CHAT_COMMANDS_GROUP", unique("g")),
                ("CHAT_JWT_PRIVATE_KEY_FILE", env::jwt_private_key_file()),
                ("CHAT_LIMIT_POSTS", "100000/100000".into()),
            ],
        )?;
        let jwks = format!("{commands_url}/v1/auth/jwks");
        platform.spawn(
            "projections",
            &[
                (
                    "CHAT_PROJECTIONS_LISTEN",
                    format!("127.0.0.1:{}", free_port()),
                ),
                ("CHAT_PROJECTION_GROUP_PREFIX", format!("{name}-")),
                ("CHAT_PROJECTION_FETCH_WAIT_MS", "20".into()),
            ],
        )?;
        platform.spawn(
            "query-api",
            &[
                ("CHAT_QUERY_LISTEN", format!("127.0.0.1:{query}")),
                ("CHAT_JWKS_URL", jwks.clone()),
            ],
        )?;
        let ws = free_port();
        platform.spawn(
            "ws-fanout",
            &[
                ("CHAT_WS_LISTEN", format!("127.0.0.1:{ws}")),
                ("CHAT_JWKS_URL", jwks),
                ("CHAT_COMMANDS_URL", commands_url.clone()),
                ("CHAT_QUERY_URL", query_url),
            ],
        )?;
        for (service, url) in [
            (0, format!("{commands_url}/readyz")),
            (3, format!("http://127.0.0.1:{ws}/readyz")),
        ] {
            platform.services[service]
                .wait_ready(&url, Duration::from_secs(120))
                .await?;
        }
        Ok((
            platform,
            Api::new(&commands_url),
            format!("ws://127.0.0.1:{ws}/v1/ws"),
        ))
    }

    fn spawn(&mut self, binary: &str, extra: &[(&str, String)]) -> anyhow::Result<()> {
        let mut vars = self.settings.clone();
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        self.services.push(Service::spawn(binary, vars)?);
        Ok(())
    }

    /// The node leading `partition` of the room topic (which must have three replicas).
    fn leader(&self, partition: i32) -> anyhow::Result<i32> {
        let (leader, replicas) = test_support::log::leader(&self.brokers, ROOM_EVENTS, partition)?;
        anyhow::ensure!(
            replicas == 3,
            "partition {partition} has {replicas} replicas, not three"
        );
        Ok(leader)
    }

    fn outputs(&self) -> String {
        self.services
            .iter()
            .map(|s| {
                let out = s.output();
                let lines: Vec<&str> = out.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n-----\n")
    }
}

/// Reads the room from seq 1 on one socket until `last` is known and reached; any gap,
/// duplicate, resync or close fails.
async fn read_room(
    url: String,
    token: String,
    room: String,
    last: Arc<AtomicUsize>,
) -> anyhow::Result<Vec<i64>> {
    let mut client = Client::connect(&url, Some(&token)).await?;
    client
        .send(json!({"type": "subscribe", "room_id": room, "since_seq": 0}))
        .await?;
    loop {
        let frame = client
            .json(Duration::from_secs(30))
            .await
            .map_err(|e| e.context("no answer to subscribe"))?;
        match frame["type"].as_str() {
            Some("subscribed") => break,
            Some("error") => anyhow::bail!("subscribe refused: {frame}"),
            _ => {}
        }
    }
    let mut seqs = Vec::new();
    loop {
        let target = last.load(Ordering::Acquire) as i64;
        if target > 0 && seqs.last().copied().unwrap_or(0) >= target {
            return Ok(seqs);
        }
        let frame = match client.next(Duration::from_millis(500)).await {
            Ok(Incoming::Json(v)) => v,
            Ok(Incoming::Closed(c)) => anyhow::bail!("closed by the node: {c:?}"),
            // Nothing for a moment (the partition changes leader): look at `last` again.
            Err(_) => continue,
        };
        match frame["type"].as_str() {
            Some("event") => {
                let seq = frame["seq"].as_i64().unwrap_or(-1);
                let expected = seqs.last().copied().unwrap_or(0) + 1;
                anyhow::ensure!(seq == expected, "expected seq {expected}, got {frame}");
                seqs.push(seq);
            }
            Some("resync") | Some("error") => anyhow::bail!("unexpected {frame}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_partition_leader_killed_mid_stream_loses_nothing() -> anyhow::Result<()> {
    let (platform, api, ws_url) = Platform::start().await?;
    let user = api.user("loss").await?;
    let room = api.create_room(&user, "public").await?;

    let last = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            tokio::spawn(read_room(
                ws_url.clone(),
                user.access_token.clone(),
                room.clone(),
                last.clone(),
            ))
        })
        .collect();

    let acked = Arc::new(AtomicUsize::new(0));
    let authors: Vec<_> = (0..AUTHORS)
        .map(|a| {
            let (api, user, room, acked) = (api.clone(), user.clone(), room.clone(), acked.clone());
            tokio::spawn(async move {
                let mut answers = BTreeMap::new();
                for i in 0..POSTS_EACH {
                    let key = format!("a{a}-{i}");
                    let body = api
                        .post_until_accepted(&user, &room, &key, "steady", Duration::from_secs(120))
                        .await?;
                    answers.insert(key, body["seq"].as_i64().unwrap_or(-1));
                    acked.fetch_add(1, Ordering::Relaxed);
                    // Steady, not flat out: a few dozen posts a second.
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                anyhow::Ok(answers)
            })
        })
        .collect();

    wait_for("a third of the posts", Duration::from_secs(120), || async {
        (acked.load(Ordering::Relaxed) >= AUTHORS * POSTS_EACH / 3).then_some(())
    })
    .await?;
    let partition = schemas::partition::partition_for(&room, 12);
    let leader = platform.leader(partition)?;
    platform.stack.kill9(&format!("broker-{leader}"))?;
    let at_kill = acked.load(Ordering::Relaxed);

    let mut answered = BTreeMap::new();
    for author in authors {
        match author.await? {
            Ok(answers) => answered.extend(answers),
            Err(e) => anyhow::bail!("{e}\n{}", platform.outputs()),
        }
    }
    assert!(
        at_kill < AUTHORS * POSTS_EACH,
        "the kill happened mid-stream"
    );
    assert_ne!(
        platform.leader(partition)?,
        leader,
        "another node leads the partition"
    );

    // The log, as every read_committed consumer sees it.
    let events =
        test_support::log::read_key(&platform.brokers, &env::registry_url(), ROOM_EVENTS, &room)
            .await?;
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e.envelope().seq.unwrap_or(-1))
        .collect();
    assert_eq!(
        seqs,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "gap-free"
    );
    assert_eq!(events.len(), 1 + AUTHORS * POSTS_EACH, "every post once");
    let on_log: BTreeMap<String, i64> = events
        .iter()
        .filter_map(|e| match e {
            DomainEvent::MessagePosted(p) => Some((
                p.envelope.idempotency_key.clone().unwrap_or_default(),
                p.envelope.seq.unwrap_or(-1),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        on_log, answered,
        "every acknowledged post with its answered seq"
    );

    last.store(events.len(), Ordering::Release);
    for reader in readers {
        let seen = tokio::time::timeout(Duration::from_secs(120), reader)
            .await
            .map_err(|_| {
                anyhow::anyhow!("a socket never reached the end\n{}", platform.outputs())
            })??
            .map_err(|e| anyhow::anyhow!("{e}\n{}", platform.outputs()))?;
        assert_eq!(seen, seqs, "every event once, in order");
    }

    // The read models agree with the log (verify compares up to what each store applied).
    let verify = Command::new(test_support::bin_dir().join("replay-tools"))
        .args(["verify", "all"])
        .envs(platform.settings.iter().cloned())
        .output()?;
    assert!(
        verify.status.success(),
        "verify all:\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    Ok(())
}
