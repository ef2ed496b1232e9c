//! The log as the commands tier sees it: the Avro codec, the idempotent producer (acks=all) of
//! the identity outbox, and the fast channel. Room events go through each partition's own
//! transactional appender (`writer::txn`).

use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use redis::aio::ConnectionManager;
use schemas::{DomainEvent, EventCodec};

use crate::error::CommandError;

/// How long a batch's answers wait for the fast channel's publish at most.
const NOTIFY_AT_MOST: std::time::Duration = std::time::Duration::from_millis(500);

pub struct EventLog {
    producer: FutureProducer,
    codec: EventCodec,
    brokers: String,
    /// Where acknowledged room events are also published for the fan-out tier: the
    /// connection and `CHAT_REDIS_PREFIX`, under which each room has its channel.
    fast: Option<(ConnectionManager, String)>,
}

impl EventLog {
    /// Creates the producer, registers every schema (an incompatible schema stops start-up
    /// here, not at the first write) and waits until the broker answers.
    pub async fn connect(brokers: &str, registry_url: &str) -> Result<Self, CommandError> {
        let producer: FutureProducer = schemas::kafka::producer_config(brokers)
            .create()
            .map_err(schemas::SchemaError::from)?;
        let codec = EventCodec::new(registry_url)?;
        codec.register_all().await?;
        let log = Self {
            producer,
            codec,
            brokers: brokers.to_string(),
            fast: None,
        };
        // Metadata first: an idempotent producer fetches its producer id right after the
        // broker answers, so the first real write does not wait for it.
        log.partition_count(schemas::topics::ROOM_EVENTS).await?;
        Ok(log)
    }

    /// Publishes acknowledged room events on the fast channel too (see
    /// `platform::cache::room_events_channel`).
    pub fn with_fast_channel(mut self, redis: ConnectionManager, redis_prefix: &str) -> Self {
        self.fast = Some((redis, redis_prefix.to_string()));
        self
    }

    /// Publishes record values the broker acknowledged, in order, each on its room's channel
    /// (a room event's key is its room). Best effort by design: a lost notification only means
    /// the fan-out waits for the log.
    pub async fn notify<'a>(&self, records: impl IntoIterator<Item = &'a (String, Vec<u8>)>) {
        let Some((redis, prefix)) = &self.fast else {
            return;
        };
        let mut pipe = redis::pipe();
        let mut published = 0;
        for (room_id, payload) in records {
            let channel = platform::cache::room_events_channel(prefix, room_id);
            pipe.publish(channel, payload.as_slice()).ignore();
            published += 1;
        }
        if published == 0 {
            return;
        }
        let mut redis = redis.clone();
        // Best effort, and the writer's answers wait for it: a slow Redis must not hold them.
        match tokio::time::timeout(NOTIFY_AT_MOST, pipe.query_async::<()>(&mut redis)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "fast channel publish failed; the log will deliver");
            }
            Err(_) => {
                tracing::warn!(
                    waited_ms = NOTIFY_AT_MOST.as_millis() as u64,
                    "fast channel publish is slow; not waiting for it (the log will deliver)"
                );
            }
        }
    }

    pub fn codec(&self) -> &EventCodec {
        &self.codec
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Partition count of `topic`, from the broker.
    pub async fn partition_count(&self, topic: &'static str) -> Result<i32, CommandError> {
        let brokers = self.brokers.clone();
        let count = tokio::task::spawn_blocking(move || -> Result<i32, CommandError> {
            let client: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .map_err(schemas::SchemaError::from)?;
            Ok(schemas::kafka::partition_count(
                &client,
                topic,
                Duration::from_secs(10),
            )?)
        })
        .await
        .map_err(|e| CommandError::Internal(e.to_string()))??;
        if count == 0 {
            return Err(CommandError::Unavailable(format!(
                "topic {topic} does not exist"
            )));
        }
        Ok(count)
    }

    /// Encodes and enqueues one event; the returned future resolves when the broker
    /// acknowledged it (or it failed). For the topics outside the room writers' transactions
    /// (the identity outbox).
    pub async fn send(
        &self,
        event: &DomainEvent,
        partition: Option<i32>,
    ) -> Result<DeliveryFuture, CommandError> {
        let (key, payload) = self.encode(event).await?;
        let mut record = FutureRecord::to(event.topic().name())
            .key(&key)
            .payload(&payload);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        self.producer
            .send_result(record)
            .map_err(|(e, _)| CommandError::Unavailable(format!("cannot enqueue the event: {e}")))
    }

    /// The record of one event: its key and its value in the Confluent wire format.
    pub async fn encode(&self, event: &DomainEvent) -> Result<(String, Vec<u8>), CommandError> {
        let payload = self.codec.encode(event).await?;
        let key = event
            .key()
            .ok_or_else(|| CommandError::Internal("event without a key".into()))?
            .to_string();
        Ok((key, payload))
    }

    /// Waits for every queued record to be acknowledged (shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}

/// Resolves a delivery future into ok / a 503-class error.
pub async fn delivered(future: DeliveryFuture) -> Result<(i32, i64), CommandError> {
    match future.await {
        Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
        Ok(Err((e, _))) => Err(CommandError::Unavailable(format!(
            "the broker did not acknowledge: {e}"
        ))),
        Err(_) => Err(CommandError::Unavailable("the producer was dropped".into())),
    }
}
