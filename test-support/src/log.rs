//! Reading what is on the log, decoded, for assertions.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::partition::partition_for;
use schemas::{DomainEvent, EventCodec};

/// Every committed event of `key`'s partition of `topic` from offset 0 to the current end whose
/// key is `key`, in log order, decoded.
pub async fn read_key(
    brokers: &str,
    registry_url: &str,
    topic: &str,
    key: &str,
) -> anyhow::Result<Vec<DomainEvent>> {
    let consumer: BaseConsumer<schemas::kafka::ReaderContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(schemas::kafka::ReaderContext)?;
    let partitions = schemas::kafka::partition_count(&consumer, topic, Duration::from_secs(10))?;
    anyhow::ensure!(partitions > 0, "topic {topic} missing");
    let partition = partition_for(key, partitions);
    // Everything acknowledged so far (`schemas::kafka::watermark_config`).
    let plain: BaseConsumer = schemas::kafka::watermark_config(brokers).create()?;
    let (_, high) = plain.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
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
            match consumer.poll(Duration::from_millis(500)) {
                // The end, past any commit markers (`schemas::kafka::positions`).
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    if let Some((_, _, at)) = schemas::kafka::positions(&consumer).first() {
                        next = next.max(*at);
                    }
                    continue;
                }
                // A broker the client knows of went away (a fault test): it reconnects elsewhere.
                Some(Err(KafkaError::MessageConsumption(_))) => continue,
                Some(message) => {
                    let message = message?;
                    next = message.offset() + 1;
                    if message.key() == Some(key.as_bytes()) {
                        raw.push(message.payload().unwrap_or_default().to_vec());
                    }
                }
                None => {}
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

/// The node leading `partition` of `topic`, and how many replicas the partition has.
pub fn leader(brokers: &str, topic: &str, partition: i32) -> anyhow::Result<(i32, usize)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("no topic {topic}"))?
        .partitions()
        .iter()
        .find(|p| p.id() == partition)
        .with_context(|| format!("no partition {partition} of {topic}"))?;
    Ok((found.leader(), found.replicas().len()))
}
