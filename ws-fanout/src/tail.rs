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
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::{DomainEvent, EventCodec};
use tokio_util::sync::CancellationToken;

use crate::error::FanoutError;
use crate::hub::{Hub, Standing};
use crate::line::Origin;
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

/// Start offsets: `checkpoint - warm`, never before the log's first record.
pub async fn start_offsets(
    brokers: &str,
    checkpoints: &[i64],
    warm: i64,
) -> Result<Vec<i64>, FanoutError> {
    let brokers = brokers.to_string();
    let checkpoints = checkpoints.to_vec();
    tokio::task::spawn_blocking(move || -> Result<Vec<i64>, FanoutError> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))?;
        let mut starts = Vec::with_capacity(checkpoints.len());
        for (p, checkpoint) in checkpoints.iter().enumerate() {
            let (low, _) = client
                .fetch_watermarks(ROOM_EVENTS, p as i32, Duration::from_secs(10))
                .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))?;
            starts.push((checkpoint - warm).max(low).max(0));
        }
        Ok(starts)
    })
    .await
    .map_err(|e| FanoutError::Internal(e.to_string()))?
}

pub struct Tail {
    consumer: StreamConsumer,
    codec: Arc<EventCodec>,
    hub: Arc<Hub>,
}

impl Tail {
    pub fn open(
        brokers: &str,
        fetch_wait_ms: u32,
        starts: &[i64],
        codec: Arc<EventCodec>,
        hub: Arc<Hub>,
    ) -> Result<Self, FanoutError> {
        let broker =
            |e: rdkafka::error::KafkaError| FanoutError::Unavailable(format!("broker: {e}"));
        // A group id is required by the client; nothing is ever committed under it.
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("chat-fanout-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
            .set("queued.max.messages.kbytes", "16384")
            .create()
            .map_err(broker)?;
        let mut assignment = TopicPartitionList::new();
        for (p, start) in starts.iter().enumerate() {
            assignment
                .add_partition_offset(ROOM_EVENTS, p as i32, Offset::Offset(*start))
                .map_err(broker)?;
            hub.set_position(p, *start);
        }
        consumer.assign(&assignment).map_err(broker)?;
        Ok(Self {
            consumer,
            codec,
            hub,
        })
    }

    /// Reads until `stop`; every record is offered to its room before its offset counts as read.
    pub async fn run(self, stop: CancellationToken, metrics: crate::metrics::Metrics) {
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                m = self.consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "log tail: consumer error; waiting for the broker");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let partition = message.partition() as usize;
            let next = message.offset() + 1;
            match message.payload() {
                Some(payload) => match self.codec.decode(payload).await {
                    Ok(event) => {
                        metrics.log_records.inc();
                        self.deliver(&event);
                    }
                    Err(e) => {
                        // The projectors dead-letter it; a socket cannot be shown it either way.
                        metrics.undecodable.inc();
                        tracing::warn!(partition, offset = message.offset(), error = %e, "undecodable record skipped");
                    }
                },
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
        let frame: Arc<str> = Arc::from(protocol::event_frame(room, seq, event));
        self.hub.offer(room, seq, frame, Origin::Log);
        let public = |v: &Visibility| *v == Visibility::Public;
        match event {
            DomainEvent::RoomCreated(e) => {
                self.hub.note_room(room, public(&e.visibility), seq == 1);
                self.hub.note_standing(room, &e.owner_id, Standing::Member);
            }
            DomainEvent::RoomUpdated(e) => self.hub.note_room(room, public(&e.visibility), false),
            DomainEvent::MemberJoined(e) => {
                self.hub.note_standing(room, &e.member_id, Standing::Member)
            }
            DomainEvent::MemberLeft(e) => {
                self.hub.note_standing(room, &e.member_id, Standing::Left)
            }
            DomainEvent::MemberBanned(e) => {
                self.hub.note_standing(room, &e.member_id, Standing::Banned)
            }
            _ => {}
        }
        // Whoever left or was banned stops receiving the room at once (after seeing that event).
        let gone = match event {
            DomainEvent::MemberLeft(e) => Some(&e.member_id),
            DomainEvent::MemberBanned(e) => Some(&e.member_id),
            _ => None,
        };
        if let Some(user) = gone {
            for outlet in self.hub.revoke(room, user) {
                outlet.push(Arc::from(protocol::error_frame(
                    "access_revoked",
                    &format!("you no longer receive room {room}; subscribe again if it is public"),
                    Some(room),
                )));
            }
        }
    }
}
