//! Reading what is on the log, decoded, for assertions.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::partition::partition_for;
use schemas::{DomainEvent, EventCodec};

/// Every event of `key`'s partition of `topic` from offset 0 to the current end whose key is
/// `key`, in log order, decoded.
pub async fn read_key(
    brokers: &str,
    registry_url: &str,
    topic: &str,
    key: &str,
) -> anyhow::Result<Vec<DomainEvent>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let partitions = schemas::kafka::partition_count(&consumer, topic, Duration::from_secs(10))?;
    anyhow::ensure!(partitions > 0, "topic {topic} missing");
    let partition = partition_for(key, partitions);
    let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    let mut raw = Vec::new();
    if high > 0 {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = 0;
        while next < high {
            anyhow::ensure!(
                Instant::now() < deadline,
                "reading {topic}/{partition} timed out at {next} of {high}"
            );
            if let Some(message) = consumer.poll(Duration::from_millis(500)) {
                let message = message?;
                next = message.offset() + 1;
                if message.key() == Some(key.as_bytes()) {
                    raw.push(message.payload().unwrap_or_default().to_vec());
                }
            }
        }
    }
    let codec = EventCodec::new(registry_url)?;
    let mut events = Vec::with_capacity(raw.len());
    for payload in raw {
        events.push(codec.decode(&payload).await.context("decoding a record")?);
    }
    Ok(events)
}
