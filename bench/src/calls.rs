//! Calls: how long a call takes to get media flowing, 1:1 (direct, and relayed through coturn)
//! and in a group of three through the SFU (Janus); and how many participants coturn and Janus
//! carry at a fixed bitrate before video loss passes 1%. The peers are real WebRTC stacks
//! (`test_support::call`, `test_support::group`) on this same machine, so every step shares the
//! two cores with the whole platform and the peers' own DTLS/SRTP work.
//!
//! `--parts` measures some of it; the others keep the numbers of the run that last measured
//! them (each part's time is in the JSON).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use test_support::call::{Call, Rate, Received};
use test_support::group::Group;
use test_support::{Api, env};

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Calls set up one after another, per kind (direct, relayed, sfu).
    #[arg(long, default_value_t = 20)]
    calls: usize,
    /// Concurrent relayed calls of coturn's capacity ladder (two participants each).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,12,16,24,32")]
    concurrent: Vec<usize>,
    /// Concurrent group calls of Janus's capacity ladder (three participants each).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,6,8,10,12")]
    groups: Vec<usize>,
    /// Seconds of each ladder step's measurement.
    #[arg(long, default_value_t = 10)]
    step_secs: u64,
    /// Video frame size (bytes) at 30 frames/s; 900 is about 220 kbit/s per participant.
    #[arg(long, default_value_t = 900)]
    video_bytes: usize,
    /// What to measure: direct, relayed, sfu (set-up times), coturn, janus (capacity).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,relayed,sfu,coturn,janus"
    )]
    parts: Vec<String>,
}

/// RTP packets of each kind that count as "media flowing".
const FLOWING: usize = 1;

/// Participants in each group call.
const GROUP: usize = 3;

/// What a ladder step measured at every receiver.
struct Measured {
    expected: u64,
    received: u64,
    loss: f64,
    /// The server's CPU and memory over the step.
    usage: Option<Value>,
}

/// Video loss over a ladder step: every receiver restarts counting, then `seconds` later says
/// what its sequence numbers expected and what came.
async fn loss_over(receivers: &[Arc<Received>], pid: Option<u32>, seconds: u64) -> Measured {
    for r in receivers {
        r.restart();
    }
    let before = pid.and_then(report::proc_stats);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = pid.and_then(report::proc_stats);
    let (mut expected, mut received) = (0u64, 0u64);
    for r in receivers {
        let (e, got) = r.video_loss();
        expected += e;
        received += got;
    }
    let loss = if expected == 0 {
        1.0
    } else {
        expected.saturating_sub(received) as f64 / expected as f64
    };
    Measured {
        expected,
        received,
        loss,
        usage: report::usage(before, after, seconds as f64),
    }
}

/// A capacity ladder: its steps, and the most participants carried at ≤ 1% video loss.
struct Ladder {
    /// The server measured (`coturn`, `janus`): its pid, and its key in each step.
    server: &'static str,
    pid: Option<u32>,
    bitrate_kbps: usize,
    steps: Vec<Value>,
    carried: usize,
}

impl Ladder {
    fn new(server: &'static str, bitrate_kbps: usize) -> Self {
        Self {
            server,
            pid: report::stack_pid(server),
            bitrate_kbps,
            steps: Vec::new(),
            carried: 0,
        }
    }

    /// Measures one step of `participants` (`step` describes its load) over `receivers`;
    /// whether the ladder goes on (the loss stayed within 1%).
    async fn step(
        &mut self,
        receivers: &[Arc<Received>],
        participants: usize,
        mut step: Value,
        seconds: u64,
    ) -> bool {
        let m = loss_over(receivers, self.pid, seconds).await;
        println!(
            "{} ({participants} participants, {} kbit/s each): video loss {:.3}%, {} {}",
            step,
            self.bitrate_kbps,
            m.loss * 100.0,
            self.server,
            m.usage
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_else(|| "?".into())
        );
        step["participants"] = json!(participants);
        step["video_packets_expected"] = json!(m.expected);
        step["video_packets_received"] = json!(m.received);
        step["video_loss"] = json!(m.loss);
        step[self.server] = m.usage.unwrap_or(Value::Null);
        self.steps.push(step);
        if m.loss > 0.01 {
            return false;
        }
        self.carried = participants;
        true
    }

    /// The ladder's record; `top`: the participants of its last planned step.
    fn finish(self, top: usize, key: &str) -> Value {
        let reached_top = self.carried == top;
        println!(
            "{} carried {}{} participants at {} kbit/s with video loss at most 1%",
            self.server,
            if reached_top { "at least " } else { "" },
            self.carried,
            self.bitrate_kbps
        );
        json!({
            "steps": self.steps,
            key: self.carried,
            "ladder_top_without_loss": reached_top,
        })
    }
}

/// A 1:1 call with media flowing both ways.
async fn flowing_call(api: &Api, relayed: bool, rate: Rate) -> anyhow::Result<Call> {
    let mut call = Call::set_up(api, relayed, rate).await?;
    call.until(Duration::from_secs(60), |c| c.media_flowing(FLOWING))
        .await?;
    Ok(call)
}

/// A group call of [`GROUP`] in which everyone receives everyone.
async fn flowing_group(api: &Api, rate: Rate) -> anyhow::Result<Group> {
    let everyone: Vec<usize> = (0..GROUP).collect();
    let mut group = Group::set_up(api, GROUP, rate).await?;
    for i in 0..GROUP {
        group.publish(api, i).await?;
    }
    group
        .until(api, Duration::from_secs(60), |g| {
            g.everyone_hears(&everyone, FLOWING)
        })
        .await?;
    Ok(group)
}

pub async fn run(args: Args, results: &Path) -> anyhow::Result<()> {
    let api = Api::new(env::entry_url()).patient();
    let rate = Rate {
        video_bytes: args.video_bytes,
        ..Rate::default()
    };
    let wants = |part: &str| args.parts.iter().any(|p| p == part);
    let previous: Value = std::fs::read_to_string(results.join("calls.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut measured = previous["measured_at_unix"].clone();
    if !measured.is_object() {
        measured = json!({});
    }
    let mut set_up = previous["set_up_ms"]
        .as_object()
        .cloned()
        .unwrap_or_default();

    for (kind, relayed) in [("direct", false), ("relayed", true)] {
        if !wants(kind) {
            continue;
        }
        let mut h = report::histogram(3);
        for _ in 0..args.calls {
            let started = Instant::now();
            let call = flowing_call(&api, relayed, rate).await?;
            h.record(started.elapsed().as_micros().max(1) as u64)?;
            call.close().await;
        }
        print_set_up(kind, &h);
        set_up.insert(kind.to_string(), report::latency_ms(&h));
        measured[kind] = json!(now);
    }
    if wants("sfu") {
        let mut h = report::histogram(3);
        for _ in 0..args.calls {
            let group = flowing_group(&api, rate).await?;
            h.record(group.started.elapsed().as_micros().max(1) as u64)?;
            group.close().await;
        }
        print_set_up("sfu", &h);
        set_up.insert("sfu".to_string(), report::latency_ms(&h));
        measured["sfu"] = json!(now);
    }

    let bitrate_kbps =
        (args.video_bytes * 8 * rate.fps as usize + rate.audio_bytes * 8 * 50) / 1000;
    let mut relay = previous["relay_ladder"].clone();
    if wants("coturn") {
        relay = relay_ladder(&api, &args, rate, bitrate_kbps).await?;
        measured["coturn"] = json!(now);
    }
    let mut sfu = previous["sfu_ladder"].clone();
    if wants("janus") {
        sfu = sfu_ladder(&api, &args, rate, bitrate_kbps).await?;
        measured["janus"] = json!(now);
    }

    report::write(
        results,
        "calls",
        &json!({
            "benchmark": "calls",
            "what": "Calls between webrtc-rs peers through the platform. Set-up time: 1:1 calls (call commands over HTTP, call.signal frames over the entry's sockets) from creating the two users to RTP of both kinds arriving on both sides, direct (loopback host candidates) and relay-only through coturn; group calls of three through the SFU from the start command to every participant receiving RTP of both kinds from both others (publish, subscribe and start through signaling's SFU routes, peers on the test network of deploy/local/sfu-net). Capacity: ladders of concurrent relay-only 1:1 calls (coturn) and of concurrent group calls of three (Janus: each participant publishes one stream and receives two) at a fixed bitrate, video loss from RTP sequence numbers at every receiver. Peers, platform, coturn and Janus share this machine.",
            "machine": report::machine(),
            "measured_at_unix": measured,
            "set_up_ms": set_up,
            "bitrate_kbps_per_participant": bitrate_kbps,
            "relay_ladder": relay,
            "sfu_ladder": sfu,
        }),
    )
}

fn print_set_up(kind: &str, h: &hdrhistogram::Histogram<u64>) {
    println!(
        "{kind:>8} call set-up to media flowing everywhere: p50 {} ms, p95 {} ms ({} calls)",
        h.value_at_quantile(0.5) / 1000,
        h.value_at_quantile(0.95) / 1000,
        h.len()
    );
}

async fn relay_ladder(
    api: &Api,
    args: &Args,
    rate: Rate,
    bitrate_kbps: usize,
) -> anyhow::Result<Value> {
    let mut ladder = Ladder::new("coturn", bitrate_kbps);
    for &n in &args.concurrent {
        let mut calls = Vec::with_capacity(n);
        for _ in 0..n {
            calls.push(flowing_call(api, true, rate).await?);
        }
        let receivers: Vec<Arc<Received>> = calls
            .iter()
            .flat_map(|c| [c.caller.received.clone(), c.callee.received.clone()])
            .collect();
        let step = json!({"calls": n});
        let go_on = ladder.step(&receivers, 2 * n, step, args.step_secs).await;
        for call in &calls {
            call.close().await;
        }
        if !go_on {
            break;
        }
    }
    let top = 2 * args.concurrent.last().copied().unwrap_or(0);
    Ok(ladder.finish(top, "relayed_participants_at_most_1pct_loss"))
}

async fn sfu_ladder(
    api: &Api,
    args: &Args,
    rate: Rate,
    bitrate_kbps: usize,
) -> anyhow::Result<Value> {
    let mut ladder = Ladder::new("janus", bitrate_kbps);
    for &n in &args.groups {
        let mut groups = Vec::with_capacity(n);
        for _ in 0..n {
            groups.push(flowing_group(api, rate).await?);
        }
        let receivers: Vec<Arc<Received>> = groups
            .iter()
            .flat_map(|g| g.members.iter())
            .flat_map(|m| m.receiving.values().map(|p| p.received.clone()))
            .collect();
        let participants = GROUP * n;
        let step = json!({
            "group_calls": n,
            "streams_forwarded": participants * (GROUP - 1),
        });
        let go_on = ladder
            .step(&receivers, participants, step, args.step_secs)
            .await;
        for group in &groups {
            group.close().await;
        }
        if !go_on {
            break;
        }
    }
    let top = GROUP * args.groups.last().copied().unwrap_or(0);
    Ok(ladder.finish(top, "sfu_participants_at_most_1pct_loss"))
}
