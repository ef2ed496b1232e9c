//! The node's tail of `chat.room-events`: every partition, no consumer group commits (each node
//! keeps its own place), decoded once and handed to the hub in log order.
//!
//! Where it starts: the presence projector's checkpoint (its Redis snapshot holds each room's
//! last seq as of that checkpoint), minus `warm_records` per partition so resumes right after a
//! node start still find their gap. Any start at or before the snapshot is correct: a room the
//! tail has not shown yet has had no event since, so the snapshot's seq is its head (see
//! `heads.rs`).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::{DomainEvent, EventCodec};
use tokio_util::sync::CancellationToken;

use crate::error::FanoutError;
use crate::hub::{Fact, Hub, Standing};
use crate::line::{Frame, Origin};
use crate::metrics::Metrics;
use crate::protocol;
use schemas::events::Visibility;

const ROOM_EVENTS: &str = schemas::topics::ROOM_EVENTS;

/// Partition count of the room topic (retried while the broker starts).
pub async fn partition_count(brokers: &str) -> Result<i32, FanoutError> {
    let brokers = brokers.to_string();
    tokio::task::spawn_blocking(move || -> Result<i32, FanoutError> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))?;
        let n = schemas::kafka::partition_count(&client, ROOM_EVENTS, Duration::from_secs(10))
            .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))?;
        if n == 0 {
            return Err(FanoutError::Unavailable(format!(
                "topic {ROOM_EVENTS} does not exist"
            )));
        }
        Ok(n)
    })
    .await
    .map_err(|e| FanoutError::Internal(e.to_string()))?
}

/// Where the tail starts in one partition, and where the log ended when it started.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub offset: i64,
    /// The high watermark at start: the node is ready once its tail passed it.
    pub end: i64,
}

/// Start offsets: `checkpoint - warm`, never before the log's first record.
pub async fn start_offsets(
    watermarks: &Watermarks,
    checkpoints: &[i64],
    warm: i64,
) -> Result<Vec<Start>, FanoutError> {
    let ends = watermarks.fetch(checkpoints.len()).await?;
    Ok(checkpoints
        .iter()
        .zip(ends)
        .map(|(checkpoint, (low, high))| {
            if *checkpoint > high {
                // The read models belong to a log that was since replaced (a wiped broker):
                // their snapshot cannot place rooms, so read this log from its start.
                tracing::warn!(
                    checkpoint,
                    high,
                    "projector checkpoint beyond the log's end"
                );
            }
            let offset = if *checkpoint > high {
                low
            } else {
                (checkpoint - warm).max(low)
            };
            Start {
                offset: offset.max(0),
                end: high,
            }
        })
        .collect())
}

/// Reads the room topic's watermarks: the start position and the tail's lag.
#[derive(Clone)]
pub struct Watermarks {
    client: Arc<BaseConsumer>,
}

impl Watermarks {
    /// High watermarks: everything acknowledged so far, which the tail reaches once the
    /// transactions open at that moment resolved (`schemas::kafka::watermark_config`).
    pub fn new(brokers: &str) -> Result<Self, FanoutError> {
        let client: BaseConsumer = schemas::kafka::watermark_config(brokers)
            .create()
            .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))?;
        Ok(Self {
            client: Arc::new(client),
        })
    }

    /// `(low, high)` per partition.
    pub async fn fetch(&self, partitions: usize) -> Result<Vec<(i64, i64)>, FanoutError> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| {
                    client
                        .fetch_watermarks(ROOM_EVENTS, p as i32, Duration::from_secs(10))
                        .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))
                })
                .collect()
        })
        .await
        .map_err(|e| FanoutError::Internal(e.to_string()))?
    }

    /// The high watermark (next offset) of one partition.
    pub async fn high(&self, partition: i32) -> Result<i64, FanoutError> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || {
            client
                .fetch_watermarks(ROOM_EVENTS, partition, Duration::from_secs(5))
                .map(|(_, high)| high)
                .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))
        })
        .await
        .map_err(|e| FanoutError::Internal(e.to_string()))?
    }

    /// Keeps the `ws_tail_lag_records` gauge current: records in the log the tail has not
    /// handed to the hub yet, over all partitions.
    pub async fn watch_lag(self, hub: Arc<Hub>, metrics: Metrics, stop: CancellationToken) {
        while !stop.is_cancelled() {
            if let Ok(ends) = self.fetch(hub.partitions()).await {
                let lag: i64 = ends
                    .iter()
                    .enumerate()
                    .map(|(p, (_, high))| (high - hub.position(p)).max(0))
                    .sum();
                metrics.tail_lag.set(lag);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}

pub struct Tail {
    consumer: StreamConsumer<schemas::kafka::ReaderContext>,
    codec: Arc<EventCodec>,
    hub: Arc<Hub>,
}

impl Tail {
    pub fn open(
        brokers: &str,
        fetch_wait_ms: u32,
        starts: &[Start],
        codec: Arc<EventCodec>,
        hub: Arc<Hub>,
    ) -> Result<Self, FanoutError> {
        let broker =
            |e: rdkafka::error::KafkaError| FanoutError::Unavailable(format!("broker: {e}"));
        // A group id is required by the client; nothing is ever committed under it.
        let consumer: StreamConsumer<schemas::kafka::ReaderContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("chat-fanout-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
            // Should a start offset ever be out of range, missing records is the one wrong answer.
            .set("auto.offset.reset", "earliest")
            .set("queued.max.messages.kbytes", "16384")
            .set("isolation.level", "read_committed")
            // End-of-partition moves the position past the commit markers that end the room
            // log, so the node counts as caught up (`Hub::set_target`) at the high watermark.
            .set("enable.partition.eof", "true")
            .create_with_context(schemas::kafka::ReaderContext)
            .map_err(broker)?;
        let mut assignment = TopicPartitionList::new();
        for (p, start) in starts.iter().enumerate() {
            assignment
                .add_partition_offset(ROOM_EVENTS, p as i32, Offset::Offset(start.offset))
                .map_err(broker)?;
            hub.set_position(p, start.offset);
            hub.set_target(p, start.end);
        }
        consumer.assign(&assignment).map_err(broker)?;
        Ok(Self {
            consumer,
            codec,
            hub,
        })
    }

    /// Reads until `stop`; every record is offered to its room before its offset counts as read.
    pub async fn run(self, stop: CancellationToken, metrics: Metrics) {
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                m = self.consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(_)) => {
                    for (_, partition, next) in schemas::kafka::positions(&self.consumer) {
                        if next > self.hub.position(partition as usize) {
                            self.hub.set_position(partition as usize, next);
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "log tail: consumer error; waiting for the broker");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let partition = message.partition() as usize;
            let next = message.offset() + 1;
            match message.payload() {
                Some(payload) => {
                    // A registry that does not answer is waited for (the room's stream would
                    // stop at the gap otherwise); a record it cannot decode is skipped.
                    let decoded = tokio::select! {
                        _ = stop.cancelled() => return,
                        decoded = platform::retry::while_transient(
                            "registry",
                            || self.codec.decode(payload),
                            schemas::SchemaError::is_transient,
                        ) => decoded,
                    };
                    match decoded {
                        Ok(event) => {
                            metrics.log_records.inc();
                            self.deliver(&event);
                        }
                        Err(e) => {
                            // The projectors dead-letter it; a socket cannot be shown it either way.
                            metrics.undecodable.inc();
                            tracing::warn!(partition, offset = message.offset(), error = %e, "undecodable record skipped");
                        }
                    }
                }
                None => metrics.undecodable.inc(),
            }
            self.hub.set_position(partition, next);
        }
    }

    fn deliver(&self, event: &DomainEvent) {
        let envelope = event.envelope();
        let (Some(room), Some(seq)) = (envelope.room_id.as_deref(), envelope.seq) else {
            return;
        };
        let frame = Frame::from(protocol::event_frame(room, seq, event));
        self.hub.offer(room, seq, frame, Origin::Log, fact(event));
    }
}

/// What an event says about who may read its room, for the hub (log records and fast copies
/// alike: both are acknowledged events, and the seq decides between them, so a node learns of
/// a join or a ban as soon as the first copy arrives).
pub fn fact(event: &DomainEvent) -> Option<Fact> {
    let standing = |user: &str, standing| {
        Some(Fact::Standing {
            user: user.to_string(),
            standing,
        })
    };
    match event {
        DomainEvent::RoomCreated(e) => Some(Fact::Created {
            owner: e.owner_id.clone(),
            public: e.visibility == Visibility::Public,
        }),
        DomainEvent::RoomUpdated(e) => Some(Fact::Visibility {
            public: e.visibility == Visibility::Public,
        }),
        DomainEvent::MemberJoined(e) => standing(&e.member_id, Standing::Member),
        DomainEvent::MemberLeft(e) => standing(&e.member_id, Standing::Left),
        DomainEvent::MemberBanned(e) => standing(&e.member_id, Standing::Banned),
        _ => None,
    }
}
