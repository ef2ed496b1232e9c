//! Replay rate: how fast `replay-tools rebuild` folds the log into each read model, and how the
//! rate holds as the log grows (100k, then 1M events by default).
//!
//! The log is synthetic chat traffic (rooms of 10 with posts, edits, deletes, reactions, read
//! markers, presence and registrations) written straight to the broker. The stack's own
//! services (all but the broker, registry and stores) are stopped first, so the rebuild has the
//! machine to itself.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Log sizes (events, all topics) at which each target is rebuilt.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    sizes: Vec<usize>,
    /// Read models to rebuild.
    #[arg(long, value_delimiter = ',', default_value = "clickhouse,redis,mongo")]
    targets: Vec<String>,
    /// The largest log rebuilt into MongoDB (FerretDB; the benchmark prints the server's own
    /// ceiling first).
    #[arg(long, default_value_t = 2_000_000)]
    mongo_max: usize,
    /// Events per batch handed to the store.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
}

pub async fn run(args: Args, results: &Path) -> anyhow::Result<()> {
    let brokers = report::stack_env("CHAT_KAFKA_BROKERS")?;
    let registry = report::stack_env("CHAT_REGISTRY_URL")?;
    let root = std::env::current_dir()?;
    // Only the broker, the registry and the stores take part: the live projectors would race
    // the rebuild, and the other tiers' consumers cost the local broker CPU (the write tier's
    // group heartbeats most of all, growing with the log).
    report::stack(
        "down",
        &["ws-fanout", "query-api", "projections", "commands"],
    )?;
    let ceiling = if args.targets.iter().any(|t| t == "mongo") {
        match mongo_ceiling(&report::stack_env("CHAT_MONGO_URL")?).await {
            Ok(c) => {
                println!(
                    "MongoDB server alone (same indexes, no projector): insert_many {:.0} documents/s, \
                     update by _id {:.0}/s, find by _id {:.0}/s",
                    c.inserts_per_second, c.updates_per_second, c.finds_per_second
                );
                Some(c)
            }
            // The measurement is context for the replay numbers, not a reason to skip them.
            Err(e) => {
                println!("MongoDB server alone: measurement failed: {e}");
                None
            }
        }
    } else {
        None
    };
    let tools = root.join("target/release/replay-tools");
    let writer = test_support::produce::Writer::new(&brokers, &registry).await?;
    let mut written = 0usize;
    let mut write_seconds = 0.0;
    let mut runs: Vec<Value> = Vec::new();
    let start_ms = schemas::envelope::now_ms() - 86_400_000;
    for &size in &args.sizes {
        let started = Instant::now();
        while written < size {
            let chunk = test_support::scenario::chat(10, 10, 500, start_ms + written as i64);
            writer.write(&chunk.events).await?;
            written += chunk.events.len();
        }
        write_seconds += started.elapsed().as_secs_f64();
        println!(
            "log: {written} events (written at {:.0} events/s)",
            written as f64 / write_seconds.max(1e-9)
        );
        // What the broker hands plain consumers with no decoding and no store: the ceiling
        // every replay below is under (one consumer, as a rebuild reads, and four).
        for readers in [1, 4] {
            let (records, seconds) = broker_read(&brokers, readers).await?;
            let rate = records as f64 / seconds.max(1e-9);
            println!(
                "  {:<10} {records:>9} records in {seconds:>7.1} s = {rate:>8.0} records/s (raw read by {readers} consumer(s), no store)",
                "broker"
            );
            runs.push(json!({"log_events": written, "target": "broker_raw_read", "readers": readers, "events": records, "seconds": seconds, "events_per_second": rate}));
        }
        for target in &args.targets {
            if target == "mongo" && written > args.mongo_max {
                println!(
                    "  {target:<10} skipped above --mongo-max {}",
                    args.mongo_max
                );
                runs.push(json!({"log_events": written, "target": target, "skipped": "above --mongo-max"}));
                continue;
            }
            let output = Command::new(&tools)
                .args([
                    "rebuild",
                    target,
                    "--batch",
                    &args.batch.to_string(),
                    "--grace-secs",
                    "0",
                ])
                .output()
                .context("cannot run target/release/replay-tools")?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            if !output.status.success() {
                bail!(
                    "rebuild {target} failed:\n{stdout}{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            // "rebuilt <target> <events> events in <s> s (<rate> events/s); ..."
            let words: Vec<&str> = stdout.split_whitespace().collect();
            let at = |i: usize| {
                words
                    .get(i)
                    .and_then(|w| w.trim_start_matches('(').parse::<f64>().ok())
            };
            let (Some(events), Some(seconds), Some(rate)) = (at(2), at(5), at(7)) else {
                bail!("unexpected rebuild output: {stdout}");
            };
            println!(
                "  {target:<10} {events:>9.0} events in {seconds:>7.1} s = {rate:>8.0} events/s"
            );
            runs.push(json!({"log_events": written, "target": target, "events": events, "seconds": seconds, "events_per_second": rate}));
        }
    }
    report::write(
        results,
        "replay",
        &json!({
            "benchmark": "replay",
            "machine": report::machine(),
            "batch": args.batch,
            "mongo_server_ceiling": ceiling.map(|c| json!({
                "insert_many_documents_per_second": c.inserts_per_second,
                "update_by_id_per_second": c.updates_per_second,
                "find_by_id_per_second": c.finds_per_second,
            })),
            "runs": runs,
        }),
    )
}

/// What the MongoDB-compatible server does on its own, with the history's indexes and
/// message-shaped documents: the ceiling any projector into it can reach, printed beside the
/// replay rate so the two can be compared.
struct MongoCeiling {
    inserts_per_second: f64,
    updates_per_second: f64,
    finds_per_second: f64,
}

async fn mongo_ceiling(url: &str) -> anyhow::Result<MongoCeiling> {
    use mongodb::bson::{Document, doc};
    let client = mongodb::Client::with_uri_str(url).await?;
    let db = client.database(&format!("ceiling_{}", schemas::envelope::now_ms()));
    read_model::ensure_indexes(&db).await?;
    let messages = db.collection::<Document>("messages");
    // Batches of the projector's own order of size.
    let (batches, per_batch, singles) = (20usize, 500usize, 200usize);
    let docs = |batch: usize| -> Vec<Document> {
        (0..per_batch)
            .map(|i| {
                let n = batch * per_batch + i;
                let content = format!("message {n} about the weekly deploy and the coffee machine");
                doc! {
                    "_id": format!("m{n}"), "room_id": format!("r{}", n % 100), "seq": n as i64,
                    "user_id": format!("u{}", n % 50), "content": &content,
                    "timestamp": mongodb::bson::DateTime::from_millis(n as i64),
                    "reactions": [], "attachments": [], "deleted": false,
                }
            })
            .collect()
    };
    let started = Instant::now();
    for batch in 0..batches {
        messages.insert_many(docs(batch)).await?;
    }
    let inserts_per_second = (batches * per_batch) as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for n in 0..singles {
        messages
            .update_one(
                doc! {"_id": format!("m{n}")},
                doc! {"$set": {"edited": true}},
            )
            .await?;
    }
    let updates_per_second = singles as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for n in 0..singles {
        messages.find_one(doc! {"_id": format!("m{n}")}).await?;
    }
    let finds_per_second = singles as f64 / started.elapsed().as_secs_f64();
    db.drop().await?;
    Ok(MongoCeiling {
        inserts_per_second,
        updates_per_second,
        finds_per_second,
    })
}

/// Reads every record of the event topics from the start with `readers` plain consumers in
/// parallel (partitions dealt round-robin; no group, no decoding); returns the record count and
/// the seconds until the last reader finished.
async fn broker_read(brokers: &str, readers: usize) -> anyhow::Result<(u64, f64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer = |brokers: &str| -> anyhow::Result<BaseConsumer<schemas::kafka::ReaderContext>> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("bench-read-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            // Done per partition at its end, which also counts for a transactional log whose
            // last offsets are markers no reader is handed.
            .set("enable.partition.eof", "true")
            .create_with_context(schemas::kafka::ReaderContext)?)
    };
    let probe = consumer(brokers)?;
    let mut shares: Vec<(TopicPartitionList, i64)> = (0..readers.max(1))
        .map(|_| (TopicPartitionList::new(), 0))
        .collect();
    let mut next = 0usize;
    for topic in schemas::topics::Topic::ALL {
        let name = topic.name();
        let partitions = schemas::kafka::partition_count(&probe, name, Duration::from_secs(10))?;
        for p in 0..partitions {
            let (low, high) = probe.fetch_watermarks(name, p, Duration::from_secs(10))?;
            if high <= low {
                continue;
            }
            let count = shares.len();
            let share = &mut shares[next % count];
            share.0.add_partition_offset(name, p, Offset::Beginning)?;
            share.1 += high - low;
            next += 1;
        }
    }
    let started = Instant::now();
    let mut threads = Vec::new();
    for (assignment, total) in shares {
        let reader = consumer(brokers)?;
        threads.push(tokio::task::spawn_blocking(
            move || -> anyhow::Result<i64> {
                reader.assign(&assignment)?;
                let (mut read, mut ended) = (0i64, 0);
                while ended < assignment.count() {
                    match reader.poll(Duration::from_secs(30)) {
                        Some(Ok(_)) => read += 1,
                        Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => ended += 1,
                        Some(Err(e)) => bail!("broker read: {e}"),
                        None => bail!("broker read stalled at {read} of {total} records"),
                    }
                }
                Ok(read)
            },
        ));
    }
    let mut read = 0i64;
    for t in threads {
        read += t.await??;
    }
    Ok((read as u64, started.elapsed().as_secs_f64()))
}
