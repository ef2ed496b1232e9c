//! The broker's own produce-to-consume latency: the floor under every delivery figure.
//!
//! A bare producer (the platform's settings: idempotent, acks=all, no lingering) writes
//! timestamped records at a fixed rate to a topic of its own with as many partitions as the
//! room log, and one consumer (the platform's fetch settings) reading every partition records
//! each record's age on arrival. Nothing is decoded or stored, so what it measures is the broker
//! alone; the platform cannot beat it on the log path on the same machine.

use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Record rates (records/s), lowest first.
    #[arg(long, value_delimiter = ',', default_value = "200,1000,5000")]
    rates: Vec<u64>,
    /// Measured seconds per rate, after the warm-up.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    /// Record size (the send timestamp plus padding), as a chat message's.
    #[arg(long, default_value_t = 200)]
    bytes: usize,
}

/// The floor alone at each rate, without sockets or the platform's tiers in the way
/// (`bench/run floor`); writes `floor.json`.
pub async fn run(args: Args, results: &std::path::Path) -> anyhow::Result<()> {
    let brokers = report::stack_env("CHAT_KAFKA_BROKERS")?;
    let partitions = report::room_partitions();
    let mut steps = Vec::new();
    println!(
        "broker floor (produce-to-consume), {partitions} partitions, {} B records:",
        args.bytes
    );
    for rate in &args.rates {
        let floor = measure(
            &brokers,
            partitions,
            *rate as f64,
            Duration::from_secs(args.warmup_secs),
            Duration::from_secs(args.secs),
            args.bytes,
        )
        .await?;
        println!(
            "  {rate:>6}/s  sent {} acked {} consumed {}  produce-to-consume {}  ack {}",
            floor.sent,
            floor.acked,
            floor.consumed,
            crate::load::summary(&floor.produce_to_consume_ms),
            crate::load::summary(&floor.produce_ack_ms),
        );
        steps.push(floor.json());
    }
    report::write(
        results,
        "floor",
        &json!({"machine": report::machine(), "partitions": partitions, "steps": steps}),
    )
}

pub const TOPIC: &str = "bench.floor";

pub struct Floor {
    pub rate_per_sec: f64,
    pub sent: u64,
    pub acked: u64,
    pub consumed: u64,
    pub produce_ack_ms: Value,
    pub produce_to_consume_ms: Value,
}

impl Floor {
    pub fn json(&self) -> Value {
        json!({
            "what": "bare idempotent producer (acks=all, linger 0) and one consumer of all partitions (fetch.wait.max.ms 5) on a topic of their own, same broker, same rate",
            "rate_per_sec": self.rate_per_sec,
            "sent": self.sent,
            "acked": self.acked,
            "consumed_in_window": self.consumed,
            "produce_ack_ms": self.produce_ack_ms,
            "produce_to_consume_ms": self.produce_to_consume_ms,
        })
    }
}

/// Runs `secs` (after `warmup` unmeasured seconds) at `rate` records/s of `bytes` bytes each.
pub async fn measure(
    brokers: &str,
    partitions: i32,
    rate: f64,
    warmup: Duration,
    secs: Duration,
    bytes: usize,
) -> anyhow::Result<Floor> {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let created = admin
        .create_topics(
            &[NewTopic::new(TOPIC, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for outcome in created {
        if let Err((topic, code)) = outcome
            && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            anyhow::bail!("creating {topic}: {code}");
        }
    }

    // The consumer starts at the current end of every partition, before the first record.
    let consumer: BaseConsumer =
        schemas::kafka::consumer_config(brokers, &format!("bench-floor-{}", uuid::Uuid::now_v7()))
            .create()?;
    // A topic just created has no leaders for a moment on Kafka (NotLeaderForPartition): the
    // ends are asked again until every partition answers.
    let started = Instant::now();
    let assignment = loop {
        let ends = || -> anyhow::Result<TopicPartitionList> {
            let count = schemas::kafka::partition_count(&consumer, TOPIC, Duration::from_secs(10))?;
            anyhow::ensure!(
                count == partitions,
                "{count} of {partitions} partitions known"
            );
            let mut assignment = TopicPartitionList::new();
            for p in 0..count {
                let (_, high) = consumer.fetch_watermarks(TOPIC, p, Duration::from_secs(10))?;
                assignment.add_partition_offset(TOPIC, p, Offset::Offset(high))?;
            }
            Ok(assignment)
        };
        match ends() {
            Ok(assignment) => break assignment,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context("the floor topic never became ready")),
        }
    };
    consumer.assign(&assignment)?;

    let base = Instant::now();
    let window = warmup.as_micros() as u64..(warmup + secs).as_micros() as u64;
    let drain_until = base + warmup + secs + Duration::from_secs(10);
    // Set once the producer knows how many records it sent inside the window.
    let expected = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let target = expected.clone();
    let measured = window.clone();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<(Histogram<u64>, u64)> {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
        let mut consumed = 0u64;
        while Instant::now() < drain_until
            && consumed < target.load(std::sync::atomic::Ordering::Acquire)
        {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let now = base.elapsed().as_micros() as u64;
            let Some(sent) = message
                .ok()
                .and_then(|m| m.payload().and_then(|p| p.get(..8)).map(<[u8]>::to_vec))
                .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
            else {
                continue;
            };
            if measured.contains(&sent) {
                latency.saturating_record(now.saturating_sub(sent));
                consumed += 1;
            }
        }
        Ok((latency, consumed))
    });

    let producer: FutureProducer = schemas::kafka::producer_config(brokers).create()?;
    // An idempotent producer's first record waits for its producer id: not part of the floor.
    producer
        .send(
            FutureRecord::<[u8], [u8]>::to(TOPIC).payload(&[0u8; 8][..]),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .context("warming the producer")?;
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let end = base + warmup + secs;
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut ack_latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let (mut sent, mut acked, mut in_window) = (0u64, 0u64, 0u64);
    let mut note_ack = |at: u64, delivered: bool| {
        if delivered {
            acked += 1;
            if window.contains(&at) {
                ack_latency.saturating_record(base.elapsed().as_micros() as u64 - at);
            }
        }
    };
    let mut n = 0u32;
    let padding = vec![b'x'; bytes.saturating_sub(8)];
    use futures::StreamExt;
    loop {
        let due = base + period * n;
        if due >= end {
            break;
        }
        n += 1;
        // Collect acknowledgements while waiting for the next slot.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => break,
                Some((at, result)) = acks.next(), if !acks.is_empty() => {
                    note_ack(at, matches!(result, Ok(Ok(_))));
                }
            }
        }
        let at = due.duration_since(base).as_micros() as u64;
        let mut payload = at.to_be_bytes().to_vec();
        payload.extend_from_slice(&padding);
        let key = uuid::Uuid::now_v7();
        match producer.send_result(
            FutureRecord::to(TOPIC)
                .payload(&payload)
                .key(&key.as_bytes()[..]),
        ) {
            Ok(delivery) => {
                sent += 1;
                if window.contains(&at) {
                    in_window += 1;
                }
                acks.push(async move { (at, delivery.await) });
            }
            Err((e, _)) => eprintln!("floor: producer queue refused a record: {e}"),
        }
    }
    expected.store(in_window, std::sync::atomic::Ordering::Release);
    while let Some((at, result)) = acks.next().await {
        note_ack(at, matches!(result, Ok(Ok(_))));
    }
    let (latency, consumed) = reader.await??;
    Ok(Floor {
        rate_per_sec: rate,
        sent,
        acked,
        consumed,
        produce_ack_ms: report::latency_ms(&ack_latency),
        produce_to_consume_ms: report::latency_ms(&latency),
    })
}
