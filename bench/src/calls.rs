//! Calls: how long a 1:1 call takes from "start" to media flowing both ways, direct and relayed
//! through coturn; and how many relayed participants coturn carries at a fixed bitrate before
//! video loss passes 1%. The peers are real WebRTC stacks (`test_support::call`) on this same
//! machine, so every step shares the two cores with the whole platform and the peers' own
//! DTLS/SRTP work.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::call::{Call, Rate};
use test_support::{Api, env};

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Calls set up one after another, per kind (direct, relayed).
    #[arg(long, default_value_t = 20)]
    calls: usize,
    /// Concurrent relayed calls of the capacity ladder (two participants each).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,12,16,24,32")]
    concurrent: Vec<usize>,
    /// Seconds of each ladder step's measurement.
    #[arg(long, default_value_t = 10)]
    step_secs: u64,
    /// Video frame size (bytes) at 30 frames/s; 900 is about 220 kbit/s per participant.
    #[arg(long, default_value_t = 900)]
    video_bytes: usize,
}

/// RTP packets of each kind that count as "media flowing".
const FLOWING: usize = 1;

pub async fn run(args: Args, results: &Path) -> anyhow::Result<()> {
    let api = Api::new(env::entry_url()).patient();
    let rate = Rate {
        video_bytes: args.video_bytes,
        ..Rate::default()
    };
    let mut set_up = serde_json::Map::new();
    for (kind, relayed) in [("direct", false), ("relayed", true)] {
        let mut h = report::histogram(3);
        for _ in 0..args.calls {
            let started = Instant::now();
            let mut call = Call::set_up(&api, relayed, rate).await?;
            call.until(Duration::from_secs(60), |c| c.media_flowing(FLOWING))
                .await?;
            h.record(started.elapsed().as_micros().max(1) as u64)?;
            call.close().await;
        }
        println!(
            "{kind:>8} call set-up, start to media both ways: p50 {} ms, p95 {} ms ({} calls)",
            h.value_at_quantile(0.5) / 1000,
            h.value_at_quantile(0.95) / 1000,
            h.len()
        );
        set_up.insert(kind.to_string(), report::latency_ms(&h));
    }

    let bitrate_kbps =
        (args.video_bytes * 8 * rate.fps as usize + rate.audio_bytes * 8 * 50) / 1000;
    let coturn = report::stack_pid("coturn");
    let mut ladder = Vec::new();
    let mut carried = 0;
    for &n in &args.concurrent {
        let mut calls = Vec::with_capacity(n);
        for _ in 0..n {
            let mut call = Call::set_up(&api, true, rate).await?;
            call.until(Duration::from_secs(60), |c| c.media_flowing(FLOWING))
                .await?;
            calls.push(call);
        }
        for call in &calls {
            call.caller.received.restart();
            call.callee.received.restart();
        }
        let before = coturn.and_then(report::proc_stats);
        tokio::time::sleep(Duration::from_secs(args.step_secs)).await;
        let after = coturn.and_then(report::proc_stats);
        let (mut expected, mut received) = (0u64, 0u64);
        for call in &calls {
            for peer in [&call.caller, &call.callee] {
                let (e, r) = peer.received.video_loss();
                expected += e;
                received += r;
            }
        }
        let loss = if expected == 0 {
            1.0
        } else {
            expected.saturating_sub(received) as f64 / expected as f64
        };
        let usage = report::usage(before, after, args.step_secs as f64);
        println!(
            "{:>3} relayed calls ({} participants, {bitrate_kbps} kbit/s each): video loss {:.3}%, coturn {}",
            n,
            2 * n,
            loss * 100.0,
            usage
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_else(|| "?".into())
        );
        ladder.push(json!({
            "calls": n,
            "participants": 2 * n,
            "video_packets_expected": expected,
            "video_packets_received": received,
            "video_loss": loss,
            "coturn": usage.unwrap_or(Value::Null),
        }));
        for call in &calls {
            call.close().await;
        }
        if loss > 0.01 {
            break;
        }
        carried = 2 * n;
    }
    let reached_top = carried == 2 * args.concurrent.last().copied().unwrap_or(0);
    println!(
        "coturn carried {}{carried} relayed participants at {bitrate_kbps} kbit/s with video loss at most 1%",
        if reached_top { "at least " } else { "" }
    );
    report::write(
        results,
        "calls",
        &json!({
            "benchmark": "calls",
            "what": "1:1 calls between two webrtc-rs peers through the platform (call commands over HTTP, call.signal frames over the entry's sockets): set-up time from the start command to RTP of both kinds arriving on both sides, one call at a time, direct (loopback host candidates) and relay-only through coturn; then a ladder of concurrent relay-only calls at a fixed bitrate, video loss from RTP sequence numbers at every receiver. Peers, platform and coturn share this machine. SFU (Janus) calls are not measured yet.",
            "machine": report::machine(),
            "set_up_ms": set_up,
            "bitrate_kbps_per_participant": bitrate_kbps,
            "relay_ladder": ladder,
            "relayed_participants_at_most_1pct_loss": carried,
            "ladder_top_without_loss": reached_top,
        }),
    )
}
