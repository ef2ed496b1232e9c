//! Post-to-socket delivery latency as the rate climbs, beside the broker's own floor.
//!
//! A ladder of rates on the same sockets (rooms of equal size, posts over HTTP), each rate after
//! the broker's produce-to-consume latency at that rate ([`crate::floor`]) and followed by a
//! drain, so each step starts from an idle pipeline and shows where the machine stops keeping up.

use std::path::Path;

use serde_json::json;

use crate::load::{self, Phase, Plan, SendOver, Target};
use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Sockets subscribed (each to one room).
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Sockets per room; rooms = sockets / room_size.
    #[arg(long, default_value_t = 100)]
    room_size: usize,
    /// Posting rates over all rooms (messages/minute), lowest first.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5000,10000,25000,50000,100000"
    )]
    rates: Vec<u64>,
    /// Posting members per room (each user may post 10 messages/s).
    #[arg(long, default_value_t = 4)]
    senders_per_room: usize,
    /// How senders post.
    #[arg(long, value_enum, default_value_t = SendOver::Http)]
    send_over: SendOver,
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

pub async fn run(args: Args, results: &Path) -> anyhow::Result<()> {
    let rooms = (args.sockets / args.room_size.max(1)).max(1);
    let plan = Plan {
        room_sizes: vec![args.sockets / rooms; rooms],
        senders_per_room: args.senders_per_room,
        send_over: args.send_over,
        content_bytes: args.content_bytes,
        max_in_flight: args.max_in_flight,
        connect_concurrency: args.connect_concurrency,
        floor_secs: args.floor_secs,
        idle_secs: 0,
        phases: args
            .rates
            .iter()
            .map(|&per_minute| Phase {
                label: format!("{per_minute}/min"),
                per_minute,
                warmup_secs: args.warmup_secs,
                secs: args.duration_secs,
                floor: true,
                drain: true,
            })
            .collect(),
    };
    let run = load::run(&Target::ours()?, &plan).await?;
    println!("\npost-to-socket delivery, beside the broker's floor at the same rate:");
    for phase in run["phases"].as_array().into_iter().flatten() {
        println!(
            "{:>7} msg/min: delivery {}\n{:>16} broker   {}",
            phase["messages_per_minute"],
            load::summary(&phase["delivery_ms"]),
            "",
            load::summary(&phase["broker_floor"]["produce_to_consume_ms"])
        );
    }
    println!(
        "over the run: out of order {}, resyncs {}, sockets closed by the node {}",
        run["out_of_order"], run["resyncs"], run["sockets_closed"]
    );
    report::write(
        results,
        &args.name,
        &json!({
            "benchmark": "delivery",
            "what": "a message posted by a room member (HTTP: the commands tier answers after the broker's ack; or a socket send) to the event frame on every subscribed socket of one ws-fanout node; latency from the post's scheduled slot (open loop); the load generator runs on the same machine",
            "machine": report::machine(),
            "warmup_seconds": args.warmup_secs,
            "run": run,
        }),
    )
}
