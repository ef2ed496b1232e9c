//! Rebuilding a partition's room state from the log before its writer accepts commands.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::topics::ROOM_EVENTS;

use super::metrics::WriterMetrics;
use crate::error::CommandError;
use crate::log::EventLog;
use crate::rooms::{Applied, Rooms};

/// Applies every committed record of `partition` from `from` up to the end of the partition
/// to `rooms` and returns the offset after the end. Conflicts (records that are not the next
/// event of their room: a second writer) are counted and logged, never applied.
///
/// The end is where the consumer reports end-of-partition, not the high watermark: the last
/// offsets of a transactional log are commit markers, which no consumer is ever handed.
/// Called after this writer fenced the partition's earlier writers, so no transaction is open
/// and the end is final.
pub async fn catch_up(
    log: &EventLog,
    partition: i32,
    from: i64,
    rooms: &mut Rooms,
    metrics: &WriterMetrics,
) -> Result<i64, CommandError> {
    let started = Instant::now();
    let consumer: StreamConsumer<schemas::kafka::ReaderContext> = ClientConfig::new()
        .set("bootstrap.servers", log.brokers())
        // Never joined or committed (the partition is assigned by hand), but librdkafka wants
        // a group id for a consumer.
        .set("group.id", "chat-commands-catchup")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        // librdkafka prefetches up to 64 MiB per consumer by default; a dozen partitions
        // catching up at once would hold most of a gigabyte the allocator never gives back.
        .set("queued.max.messages.kbytes", "4096")
        .set("enable.partition.eof", "true")
        .create_with_context(schemas::kafka::ReaderContext)
        .map_err(schemas::SchemaError::from)?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(ROOM_EVENTS, partition, Offset::Offset(from))
        .map_err(schemas::SchemaError::from)?;
    consumer
        .assign(&assignment)
        .map_err(schemas::SchemaError::from)?;

    let mut next = from;
    let mut applied = 0u64;
    loop {
        let received = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| {
                CommandError::Unavailable(format!(
                    "catching up partition {partition}: nothing after offset {next} within 30 s"
                ))
            })?;
        let message = match received {
            Ok(message) => message,
            Err(KafkaError::PartitionEOF(_)) => {
                next = position(&consumer, partition).unwrap_or(next);
                break;
            }
            Err(e) => return Err(schemas::SchemaError::from(e).into()),
        };
        next = message.offset() + 1;
        let Some(payload) = message.payload() else {
            metrics.undecodable.inc();
            continue;
        };
        // A registry that does not answer is waited for: skipping the record would lose its seq
        // from the state, and the writer would hand it out again.
        let decoded = platform::retry::while_transient(
            "registry",
            || log.codec().decode(payload),
            schemas::SchemaError::is_transient,
        )
        .await;
        match decoded {
            Ok(event) => match rooms.apply(&event) {
                Applied::Applied => applied += 1,
                Applied::Duplicate => {}
                Applied::Conflict(reason) => {
                    metrics.conflicts.inc();
                    tracing::warn!(partition, offset = message.offset(), %reason, "conflicting record ignored");
                }
            },
            Err(e) => {
                metrics.undecodable.inc();
                tracing::warn!(partition, offset = message.offset(), error = %e, "undecodable record ignored");
            }
        }
    }
    metrics.catchup_events.inc_by(applied);
    tracing::info!(
        partition,
        from,
        to = next,
        applied,
        rooms = rooms.len(),
        ms = started.elapsed().as_millis() as u64,
        "partition caught up"
    );
    Ok(next)
}

/// Where the consumer continues in `partition` (past any commit markers it skipped).
fn position(
    consumer: &StreamConsumer<schemas::kafka::ReaderContext>,
    partition: i32,
) -> Option<i64> {
    let list = consumer.position().ok()?;
    list.find_partition(ROOM_EVENTS, partition)?
        .offset()
        .to_raw()
        .filter(|o| *o >= 0)
}
