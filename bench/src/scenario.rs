//! The named scenarios, each run against ours and then against the Socket.io peer on the same
//! machine in the same invocation, by the same generator with the same schedule:
//!
//! - `seed`: the seed's load: 10,000 sockets, 100K messages/minute.
//! - `burst`: 10K messages/minute, a 10x spike for 30 s, back to 10K: how deep the spike cuts
//!   and how fast delivery recovers.
//! - `soak`: 10K messages/minute for about 10 minutes, reported per minute: does latency or
//!   memory creep.
//! - `moonshot`: about the most sockets this box holds (60,000: receiving worker processes of
//!   15,000 each, ws-fanout or peer nodes of at most 18,000 each), 1M messages/minute for 20 s.
//! - `replay`: rebuild rate per read model (ours only: the peer keeps nothing to rebuild).
//!
//! Rooms have Zipf-distributed sizes (a few large rooms, many small), and posts go to every room
//! at the same rate, so a message reaches `sockets / rooms` sockets on average: at the seed's
//! 100K/minute in 100 rooms that is the ~167,000 socket deliveries/s the seed implies.
//!
//! Ours runs first with the whole stack up; before the peer runs, our services, broker and
//! stores are stopped (Redis stays: the peer's adapter uses it), so each side has the machine.

use std::path::Path;

use clap::Parser;
use serde_json::{Value, json};

use crate::load::{self, Node, Phase, Plan, SendOver, Target};
use crate::{peer, receivers, replay, report, sockets, summary};

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Name {
    Seed,
    Burst,
    Soak,
    Moonshot,
    Replay,
}

impl Name {
    fn as_str(self) -> &'static str {
        match self {
            Name::Seed => "seed",
            Name::Burst => "burst",
            Name::Soak => "soak",
            Name::Moonshot => "moonshot",
            Name::Replay => "replay",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Targets {
    Both,
    Ours,
    Peer,
}

#[derive(clap::Args)]
pub struct Args {
    /// Scenarios to run (all when none is named).
    #[arg(value_enum)]
    scenarios: Vec<Name>,
    /// Which side to run; a side not run keeps its earlier result in the scenario's file.
    #[arg(long, value_enum, default_value_t = Targets::Both)]
    target: Targets,
    /// Minutes of the soak.
    #[arg(long, default_value_t = 10)]
    soak_minutes: u64,
    /// Receiving sockets of the moonshot (the box held 60,000 idle ones on four nodes,
    /// `bench/run sockets --sockets 60000 --nodes 4`).
    #[arg(long, default_value_t = 60_000)]
    moonshot_sockets: usize,
    /// Socket.io processes of the peer (Node.js runs one thread each; two use both cores), at
    /// least; a scenario with more sockets than these hold gets more (as ours gets ws-fanout
    /// nodes).
    #[arg(long, default_value_t = 2)]
    peer_nodes: usize,
    /// Log sizes of the replay scenario.
    #[arg(long, default_value = "100000,1000000")]
    replay_sizes: String,
    /// Scale every phase's duration (and the soak) down, for a quick check of the harness.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Scale every scenario's sockets and rates down, for a quick check of the harness.
    #[arg(long, default_value_t = 1.0)]
    load_scale: f64,
}

/// A delivery scenario's sockets, rooms and schedule.
struct Scenario {
    name: Name,
    what: String,
    sockets: usize,
    rooms: usize,
    senders_per_room: usize,
    phases: Vec<Phase>,
}

fn phase(label: &str, per_minute: u64, secs: u64, first: bool, last: bool) -> Phase {
    Phase {
        label: label.into(),
        per_minute,
        warmup_secs: if first { 5 } else { 0 },
        secs,
        floor: first || per_minute > 10_000,
        drain: last,
    }
}

fn scenarios(args: &Args) -> Vec<Scenario> {
    let secs = |s: u64| ((s as f64 * args.time_scale).round() as u64).max(1);
    let rate = |r: u64| ((r as f64 * args.load_scale).round() as u64).max(60);
    let sockets = |n: usize| ((n as f64 * args.load_scale).round() as usize).max(10);
    let minutes = args.soak_minutes.max(1);
    vec![
        Scenario {
            name: Name::Seed,
            what: "10,000 sockets in 100 rooms (Zipf sizes), 4 senders per room posting over their sockets, 100K messages/minute for 30 s".into(),
            sockets: sockets(10_000),
            rooms: 100,
            senders_per_room: 4,
            phases: vec![phase("100K/min", rate(100_000), secs(30), true, true)],
        },
        Scenario {
            name: Name::Burst,
            what: "10,000 sockets in 100 rooms (Zipf sizes): 10K messages/minute for 30 s, 100K for 30 s, 10K for 60 s, one schedule".into(),
            sockets: sockets(10_000),
            rooms: 100,
            senders_per_room: 4,
            phases: vec![
                phase("before", rate(10_000), secs(30), true, false),
                phase("spike 10x", rate(100_000), secs(30), false, false),
                phase("after", rate(10_000), secs(60), false, true),
            ],
        },
        Scenario {
            name: Name::Soak,
            what: format!("10,000 sockets in 100 rooms (Zipf sizes), 10K messages/minute for {minutes} minutes, reported per minute"),
            sockets: sockets(10_000),
            rooms: 100,
            senders_per_room: 4,
            phases: (1..=minutes)
                .map(|m| phase(&format!("minute {m}"), rate(10_000), secs(60), m == 1, m == minutes))
                .collect(),
        },
        {
            let rooms = (args.moonshot_sockets / 100).max(1);
            let mut moonshot = Scenario {
                name: Name::Moonshot,
                what: String::new(),
                sockets: sockets(args.moonshot_sockets),
                rooms,
                senders_per_room: senders_for(rate(1_000_000), rooms),
                phases: vec![phase("1M/min", rate(1_000_000), secs(20), true, true)],
            };
            moonshot.what = format!(
                "{} sockets in {rooms} rooms (Zipf sizes) held by {} receiving processes on {} ws-fanout (or peer) nodes, {} senders per room, 1M messages/minute for 20 s",
                args.moonshot_sockets,
                moonshot.sockets.div_ceil(receivers::SOCKETS_PER_PROCESS),
                nodes_for(moonshot.all_sockets()),
                moonshot.senders_per_room,
            );
            moonshot
        },
    ]
}

/// Senders per room so that none posts faster than 7 messages/s: the commands tier allows a
/// user 10/s (`CHAT_LIMIT_POSTS`), and a refusal would measure the limit, not the path.
fn senders_for(per_minute: u64, rooms: usize) -> usize {
    (per_minute as f64 / 60.0 / rooms.max(1) as f64 / 7.0)
        .ceil()
        .max(1.0) as usize
}

/// Socket servers (ws-fanout or peer nodes) for `sockets` in all: one process may hold 20,000
/// open files here; 18,000 each leaves room for the rest of its files.
fn nodes_for(sockets: usize) -> usize {
    sockets.div_ceil(18_000).max(1)
}

impl Scenario {
    fn all_sockets(&self) -> usize {
        self.sockets + self.rooms * self.senders_per_room
    }
}

/// Sizes of `rooms` rooms holding `sockets` in all, room k (from 1) in proportion to 1/k^s,
/// each at least one; largest first.
pub fn zipf_sizes(sockets: usize, rooms: usize, s: f64) -> Vec<usize> {
    let rooms = rooms.clamp(1, sockets.max(1));
    let weights: Vec<f64> = (1..=rooms).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let spare = sockets.saturating_sub(rooms) as f64;
    let exact: Vec<f64> = weights.iter().map(|w| spare * w / total).collect();
    let mut sizes: Vec<usize> = exact.iter().map(|e| 1 + e.floor() as usize).collect();
    // Hand out what flooring left over to the largest remainders.
    let mut order: Vec<usize> = (0..rooms).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let short = sockets.saturating_sub(sizes.iter().sum());
    for &k in order.iter().take(short) {
        sizes[k] += 1;
    }
    sizes
}

fn save(results: &Path, scenario: &Scenario, side: &str, run: Value) -> anyhow::Result<()> {
    let name = scenario.name.as_str();
    let mut file = report::read(results, name)
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    file["scenario"] = json!(name);
    file["what"] = json!(scenario.what);
    file["machine"] = report::machine();
    file["durability"] = json!({
        "ours": "every message is appended to the log (acks=all) before any socket sees it; history, analytics and presence are rebuilt from the log",
        "peer": "broadcast from memory: nothing is written down, no token is checked, no order numbers; a crash loses what was in flight",
    });
    file[side] = run;
    report::write(results, name, &file)
}

pub async fn run(args: Args, results: &Path) -> anyhow::Result<()> {
    let wanted: Vec<Name> = if args.scenarios.is_empty() {
        vec![
            Name::Seed,
            Name::Burst,
            Name::Soak,
            Name::Moonshot,
            Name::Replay,
        ]
    } else {
        args.scenarios.clone()
    };
    let delivery: Vec<Scenario> = scenarios(&args)
        .into_iter()
        .filter(|s| wanted.contains(&s.name))
        .collect();
    // The broker floor and the idle window each take 20 s, scaled with the phases.
    let measure_secs = ((20.0 * args.time_scale).round() as u64).max(2);
    let plan = |s: &Scenario| Plan {
        room_sizes: zipf_sizes(s.sockets, s.rooms, 1.0),
        senders_per_room: s.senders_per_room,
        send_over: SendOver::Socket,
        content_bytes: 200,
        max_in_flight: 2000,
        connect_concurrency: 200,
        floor_secs: measure_secs,
        idle_secs: measure_secs,
        phases: s.phases.clone(),
    };
    if args.target != Targets::Peer {
        for scenario in &delivery {
            println!("\n=== {} (ours) ===", scenario.name.as_str());
            // More sockets than one node holds get ws-fanout nodes of their own for the
            // scenario (stopped when `extra` is dropped).
            let mut extra = Vec::new();
            for _ in 1..nodes_for(scenario.all_sockets()) {
                extra.push(sockets::extra_node().await?);
            }
            let mut ours = Target::ours()?;
            if let Target::Ours { nodes, .. } = &mut ours {
                nodes.extend(extra.iter().map(|n| Node {
                    url: n.ws_url.clone(),
                    pid: Some(n.pid),
                }));
            }
            let run = load::run(&ours, &plan(scenario)).await?;
            save(results, scenario, "ours", run)?;
        }
        if wanted.contains(&Name::Replay) {
            println!("\n=== replay (ours) ===");
            #[derive(Parser)]
            struct Replay {
                #[command(flatten)]
                args: replay::Args,
            }
            let replay = Replay::try_parse_from([
                "replay",
                "--sizes",
                &args.replay_sizes,
                "--targets",
                "clickhouse,redis",
            ])?;
            replay::run(replay.args, results).await?;
        }
    }
    if args.target != Targets::Ours && !delivery.is_empty() {
        // The peer gets the machine: everything of ours but Redis (its adapter's) and
        // PostgreSQL (the machine's own) stops.
        report::stack(
            "down",
            &[
                "nginx",
                "ws-fanout",
                "query-api",
                "projections",
                "commands",
                "clickhouse",
                "mongo",
                "registry",
                "broker",
            ],
        )?;
        for scenario in &delivery {
            println!("\n=== {} (peer) ===", scenario.name.as_str());
            let count = args.peer_nodes.max(nodes_for(scenario.all_sockets()));
            let nodes = peer::Peer::start(count, 18_100).await?;
            let target = Target::Peer {
                nodes: nodes
                    .urls
                    .iter()
                    .zip(&nodes.pids)
                    .map(|(url, &pid)| Node {
                        url: url.clone(),
                        pid: Some(pid),
                    })
                    .collect(),
            };
            let outcome = load::run(&target, &plan(scenario)).await;
            nodes.stop().await;
            save(results, scenario, "peer", outcome?)?;
        }
    }
    // A scaled-down run checks the harness; its numbers do not belong in the README.
    let full = args.time_scale == 1.0 && args.load_scale == 1.0;
    summary::write(results, full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_sizes_hold_every_socket_largest_first() {
        let sizes = zipf_sizes(10_000, 100, 1.0);
        assert_eq!(sizes.len(), 100);
        assert_eq!(sizes.iter().sum::<usize>(), 10_000);
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        // 1/k: the first room is about 100 times the last (H(100) = 5.19: 1,927 and 19).
        assert!((1900..1950).contains(&sizes[0]), "{}", sizes[0]);
        assert!((18..22).contains(&sizes[99]), "{}", sizes[99]);
        // More rooms than sockets: one socket each, no empty room.
        assert_eq!(zipf_sizes(5, 10, 1.0), vec![1; 5]);
    }
}
