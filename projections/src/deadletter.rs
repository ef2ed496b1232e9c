//! `chat.dead-letter`: records a projector could not apply, kept with why and where from.
//!
//! The value is the original record's bytes (which may not even decode) and the key its key;
//! the origin and the error ride in headers (`origin-topic`, `origin-partition`,
//! `origin-offset`, `error`, `consumer`), as Kafka Connect's dead-letter queues do, so any
//! Kafka tool can inspect and replay them.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::topics::{DEAD_LETTER, Topic};

use crate::error::ProjectionError;

#[derive(Clone)]
pub struct DeadLetter {
    producer: FutureProducer,
    consumer: Arc<str>,
    metric: prometheus::IntCounterVec,
}

impl DeadLetter {
    pub fn new(
        brokers: &str,
        consumer: &str,
        metric: prometheus::IntCounterVec,
    ) -> Result<Self, ProjectionError> {
        Ok(Self {
            producer: schemas::kafka::producer_config(brokers).create()?,
            consumer: Arc::from(consumer),
            metric,
        })
    }

    /// Appends one dead letter and waits for the broker's acknowledgement, so a checkpoint
    /// that moves past the record never gets ahead of its dead letter.
    pub async fn send(
        &self,
        topic: Topic,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        error: &str,
    ) -> Result<(), ProjectionError> {
        let partition_text = partition.to_string();
        let offset_text = offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "origin-topic",
                value: Some(topic.name()),
            })
            .insert(Header {
                key: "origin-partition",
                value: Some(partition_text.as_str()),
            })
            .insert(Header {
                key: "origin-offset",
                value: Some(offset_text.as_str()),
            })
            .insert(Header {
                key: "error",
                value: Some(error),
            })
            .insert(Header {
                key: "consumer",
                value: Some(&*self.consumer),
            });
        let mut record = FutureRecord::to(DEAD_LETTER)
            .payload(payload)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| ProjectionError::Kafka(e))?;
        let kind = if error.starts_with("undecodable") {
            "undecodable"
        } else {
            "conflict"
        };
        self.metric
            .with_label_values(&[&*self.consumer, kind])
            .inc();
        Ok(())
    }
}
