//! `lag`: every consumer group's committed position against the end of each partition.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::topics::Topic;

pub struct Row {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub end: i64,
}

impl Row {
    pub fn lag(&self) -> Option<i64> {
        self.committed.map(|c| (self.end - c).max(0))
    }
}

/// Groups the broker lists, plus the platform's own (a broker may not list idle groups).
fn groups(consumer: &BaseConsumer, known: &[String], timeout: Duration) -> Vec<String> {
    let mut groups: Vec<String> = match consumer.fetch_group_list(None, timeout) {
        Ok(list) => list.groups().iter().map(|g| g.name().to_string()).collect(),
        Err(e) => {
            tracing::debug!(error = %e, "the broker does not list groups; using the known ones");
            Vec::new()
        }
    };
    for g in known {
        if !groups.contains(g) {
            groups.push(g.clone());
        }
    }
    groups.sort();
    groups
}

pub fn lag(brokers: &str, known: &[String], timeout: Duration) -> anyhow::Result<Vec<Row>> {
    let admin: BaseConsumer = schemas::kafka::watermark_config(brokers)
        .create()
        .context("cannot create a Kafka client")?;
    let mut ends = Vec::new();
    for topic in Topic::ALL {
        let partitions = schemas::kafka::partition_count(&admin, topic.name(), timeout)
            .with_context(|| format!("cannot reach the broker at {brokers}"))?;
        for p in 0..partitions {
            let (_, high) = admin.fetch_watermarks(topic.name(), p, timeout)?;
            ends.push((topic.name(), p, high));
        }
    }
    let mut rows = Vec::new();
    for group in groups(&admin, known, timeout) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut list = TopicPartitionList::new();
        for (topic, p, _) in &ends {
            list.add_partition(topic, *p);
        }
        let committed = consumer
            .committed_offsets(list, timeout)
            .with_context(|| format!("committed offsets of group {group}"))?;
        let mut any = false;
        for element in committed.elements() {
            let Offset::Offset(c) = element.offset() else {
                continue;
            };
            any = true;
            let end = ends
                .iter()
                .find(|(t, p, _)| *t == element.topic() && *p == element.partition())
                .map_or(0, |e| e.2);
            rows.push(Row {
                group: group.clone(),
                topic: element.topic().to_string(),
                partition: element.partition(),
                committed: Some(c),
                end,
            });
        }
        if !any {
            rows.push(Row {
                group: group.clone(),
                topic: "-".into(),
                partition: -1,
                committed: None,
                end: 0,
            });
        }
    }
    Ok(rows)
}
