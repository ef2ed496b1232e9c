//! Reading a projector's topics: every partition, from the projector's own checkpoints, in
//! batches bounded by size and delay. Records that cannot be decoded go to the dead-letter
//! topic right here and never reach the projector, but still advance its positions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::topics::Topic;
use schemas::{DomainEvent, EventCodec, SchemaError};

use crate::deadletter::DeadLetter;
use crate::error::ProjectionError;

/// One decoded record.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Arc<[u8]>,
    pub event: DomainEvent,
}

/// Where each partition continues after this batch (offset of the next record).
pub type Positions = BTreeMap<(Topic, i32), i64>;

#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub positions: Positions,
    /// Records dead-lettered because they could not be decoded.
    pub undecodable: usize,
}

impl Batch {
    /// Whether a projector has anything to store for this batch. A batch that only moved
    /// positions past commit markers has not: skipping it loses nothing, as the markers are
    /// skipped again after a restart.
    pub fn has_records(&self) -> bool {
        !self.records.is_empty() || self.undecodable > 0
    }
}

/// How long `next_batch` waits for a first record before it returns an empty batch.
const IDLE_RETURN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub brokers: String,
    /// Used for committing positions so `replay-tools lag` can show this projector's lag; the
    /// projector's own checkpoints (in its store) decide where it resumes.
    pub group_id: String,
    pub topics: Vec<Topic>,
    pub max_batch: usize,
    pub max_wait: Duration,
    /// How long the broker may hold an empty fetch (it answers at once when data arrives; the
    /// wait only bounds how often an idle projector asks).
    pub fetch_wait_ms: u64,
}

pub struct Source {
    consumer: StreamConsumer<schemas::kafka::ReaderContext>,
    codec: Arc<EventCodec>,
    dead_letter: DeadLetter,
    config: SourceConfig,
    start: Positions,
    /// The furthest position known per partition (records taken, ends reached).
    seen: std::sync::Mutex<HashMap<(Topic, i32), i64>>,
}

impl Source {
    /// Assigns every partition of the topics, starting at `start` (the checkpoint: next offset
    /// to read) or at the beginning of the log.
    pub async fn open(
        config: SourceConfig,
        codec: Arc<EventCodec>,
        dead_letter: DeadLetter,
        start: &Positions,
    ) -> Result<Self, ProjectionError> {
        let consumer: StreamConsumer<schemas::kafka::ReaderContext> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", config.fetch_wait_ms.to_string())
            .set("queued.max.messages.kbytes", "16384")
            .set("isolation.level", "read_committed")
            // End-of-partition moves positions past the commit markers that end the room log
            // (see `schemas::kafka::positions`), so "caught up" means the high watermark.
            .set("enable.partition.eof", "true")
            .create_with_context(schemas::kafka::ReaderContext)?;
        let metadata_timeout = Duration::from_secs(10);
        let mut assignment = TopicPartitionList::new();
        for &topic in &config.topics {
            let partitions = {
                let metadata = consumer.fetch_metadata(Some(topic.name()), metadata_timeout)?;
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic.name())
                    .map(|t| t.partitions().len() as i32)
                    .unwrap_or(0)
            };
            if partitions == 0 {
                return Err(ProjectionError::Other(format!(
                    "topic {} does not exist",
                    topic.name()
                )));
            }
            for p in 0..partitions {
                let offset = match start.get(&(topic, p)) {
                    Some(&next) => Offset::Offset(next),
                    None => Offset::Beginning,
                };
                assignment.add_partition_offset(topic.name(), p, offset)?;
            }
        }
        consumer.assign(&assignment)?;
        Ok(Self {
            consumer,
            codec,
            dead_letter,
            config,
            start: start.clone(),
            seen: std::sync::Mutex::new(start.iter().map(|(k, v)| (*k, *v)).collect()),
        })
    }

    /// Where reading started (the checkpoints), per partition that had one.
    pub fn start(&self) -> &Positions {
        &self.start
    }

    /// The next batch: waits for a first record, then takes what arrives within `max_wait`,
    /// up to `max_batch` records. A batch without records only moves positions: the reader
    /// reached the end of a partition past commit markers (nothing to apply, nothing lost if
    /// the projector does not store it: the markers are skipped again after a restart).
    pub async fn next_batch(&mut self) -> Result<Batch, ProjectionError> {
        let mut batch = Batch::default();
        let first = loop {
            // An idle projector still comes back every second with an empty batch, so the
            // runner looks at its store (a generation switched, a model lost) while nothing
            // arrives. Dropping `recv` before it yields takes no message.
            let received = match tokio::time::timeout(IDLE_RETURN, self.consumer.recv()).await {
                Ok(received) => received,
                Err(_) => return Ok(batch),
            };
            match received {
                Ok(message) => break message,
                Err(KafkaError::PartitionEOF(_)) => {
                    if self.reached_end(&mut batch) {
                        return Ok(batch);
                    }
                }
                // The client reconnects by itself; a broker restart is not the projector's end.
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error; waiting for the broker");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        self.take(&first, &mut batch).await?;
        let deadline = Instant::now() + self.config.max_wait;
        while batch.records.len() + batch.undecodable < self.config.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, self.consumer.recv()).await {
                Ok(Ok(message)) => self.take(&message, &mut batch).await?,
                Ok(Err(KafkaError::PartitionEOF(_))) => {
                    self.reached_end(&mut batch);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error; applying what was read");
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    /// At an end of partition: every position the consumer moved past what was handed out
    /// (markers) goes into `batch`. Whether any did.
    fn reached_end(&self, batch: &mut Batch) -> bool {
        let mut moved = false;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, partition, next) in schemas::kafka::positions(&self.consumer) {
            let Some(topic) = Topic::from_name(&topic) else {
                continue;
            };
            let known = seen.entry((topic, partition)).or_insert(next);
            if next > *known {
                *known = next;
                let at = batch.positions.entry((topic, partition)).or_insert(next);
                *at = (*at).max(next);
                moved = true;
            }
        }
        moved
    }

    async fn take(
        &self,
        message: &rdkafka::message::BorrowedMessage<'_>,
        batch: &mut Batch,
    ) -> Result<(), ProjectionError> {
        let Some(topic) = Topic::from_name(message.topic()) else {
            return Ok(());
        };
        let partition = message.partition();
        let offset = message.offset();
        batch.positions.insert((topic, partition), offset + 1);
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((topic, partition), offset + 1);
        let payload: Arc<[u8]> = Arc::from(message.payload().unwrap_or_default());
        let key = message.key().map(<[u8]>::to_vec);
        // A registry that does not answer is waited for: only a record that cannot be decoded
        // with the registry answering goes to dead letters.
        let decoded = platform::retry::while_transient(
            "registry",
            || self.codec.decode(&payload),
            SchemaError::is_transient,
        )
        .await;
        match decoded {
            Ok(event) => batch.records.push(Record {
                topic,
                partition,
                offset,
                key,
                payload,
                event,
            }),
            Err(e) => {
                tracing::warn!(topic = topic.name(), partition, offset, error = %e, "undecodable record; dead-lettered");
                self.dead_letter
                    .send(
                        topic,
                        partition,
                        offset,
                        key.as_deref(),
                        &payload,
                        &format!("undecodable: {e}"),
                    )
                    .await?;
                batch.undecodable += 1;
            }
        }
        Ok(())
    }

    /// Records the positions in the Kafka group (best effort; for lag reporting only).
    pub fn commit(&self, positions: &Positions) {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in positions {
            if list
                .add_partition_offset(topic.name(), *partition, Offset::Offset(*next))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(error = %e, "offset commit failed (lag reporting only)");
        }
    }

    pub fn group_id(&self) -> &str {
        &self.config.group_id
    }
}

/// Merges the highest next-offset per partition.
pub fn advance(into: &mut HashMap<(Topic, i32), i64>, positions: &Positions) {
    for (k, v) in positions {
        let e = into.entry(*k).or_insert(*v);
        *e = (*e).max(*v);
    }
}
