//! Client settings shared by every tier, and idempotent topic creation.
//!
//! Producers never linger and are idempotent with acks=all; the room writers are transactional
//! on top of that (see `commands`), so a fenced former owner cannot append. Consumers read
//! `read_committed`: they see a room event only once its transaction committed, never one a
//! fenced writer left open. A consumer's `fetch.wait.max.ms` only bounds how long an idle fetch
//! waits: Apache Kafka answers a fetch as soon as data arrives, so the wait costs no latency.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::SchemaError;
use crate::partition::LIBRDKAFKA_PARTITIONER;
use crate::topics::Topic;

/// Idempotent, acks=all, no lingering, partitioned like [`crate::partition::partition_for`].
pub fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("partitioner", LIBRDKAFKA_PARTITIONER)
        .set("message.timeout.ms", "30000");
    with_debug(config)
}

/// `CHAT_KAFKA_DEBUG` (e.g. `cgrp,fetch`) turns on librdkafka's debug contexts, for operators
/// chasing a broker or group problem; unset by default.
fn with_debug(mut config: ClientConfig) -> ClientConfig {
    if let Ok(contexts) = std::env::var("CHAT_KAFKA_DEBUG")
        && !contexts.trim().is_empty()
    {
        config.set("debug", contexts.trim());
    }
    config
}

/// A client that sees the log as every reader of the platform does: `read_committed` (also
/// librdkafka's default, spelled out here because the platform depends on it).
pub fn reader_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("isolation.level", "read_committed");
    with_debug(config)
}

/// A client for "where does the log end": the high watermark, everything acknowledged so far.
///
/// It must be `read_uncommitted`: a `read_committed` client (librdkafka's default) is answered
/// the last stable offset, which stays behind a transaction that committed until the broker
/// has written its markers, a few milliseconds after the writer was told; a record already
/// acknowledged can lie beyond it. A `read_committed` reader reaches the high watermark once
/// the transactions open at that moment resolved (end-of-partition carries it past their
/// markers, see [`positions`]).
pub fn watermark_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("isolation.level", "read_uncommitted");
    with_debug(config)
}

/// A check for `platform::ops::Ops::dependencies`.
pub type Check =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The log's two dependencies as every tier reports them at a scrape
/// (`dependency_up{dependency="broker"|"registry"}`): the brokers give the room topic's
/// metadata, the schema registry lists its subjects, each within two seconds.
pub fn log_checks(brokers: &str, registry_url: &str) -> [(&'static str, Check); 2] {
    let wait = Duration::from_secs(2);
    let client = watermark_config(brokers)
        .create::<BaseConsumer>()
        .map(std::sync::Arc::new)
        .map_err(|e| e.to_string());
    let broker: Check = Box::new(move || {
        let client = client.clone();
        Box::pin(async move {
            let client = client?;
            tokio::task::spawn_blocking(move || {
                client
                    .fetch_metadata(Some(Topic::RoomEvents.name()), wait)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        })
    });
    let http = reqwest::Client::builder()
        .timeout(wait)
        .build()
        .map_err(|e| e.to_string());
    let subjects = format!("{}/subjects", registry_url.trim_end_matches('/'));
    let registry: Check = Box::new(move || {
        let (http, subjects) = (http.clone(), subjects.clone());
        Box::pin(async move {
            let answer = http?
                .get(&subjects)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if answer.status().is_success() {
                Ok(())
            } else {
                Err(format!("{subjects} answered {}", answer.status()))
            }
        })
    });
    [("broker", broker), ("registry", registry)]
}

/// Manual commits, start from the beginning of the log when the group has no offset.
pub fn consumer_config(brokers: &str, group_id: &str) -> ClientConfig {
    let mut config = reader_config(brokers);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("session.timeout.ms", "10000");
    config
}

/// What [`ensure_topics`] did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    Created { partitions: i32 },
    Existed { partitions: i32 },
}

/// How many copies of each partition the cluster keeps. With three or more, a write is
/// acknowledged only once two replicas have it (`min.insync.replicas=2` with acks=all), so
/// losing any one broker loses no acknowledged event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication(pub i32);

impl Replication {
    pub const SINGLE: Replication = Replication(1);

    pub fn min_insync(self) -> i32 {
        if self.0 >= 3 { 2 } else { 1 }
    }

    /// Settings every topic gets on top of [`Topic::config`].
    fn config(self) -> Vec<(&'static str, String)> {
        vec![("min.insync.replicas", self.min_insync().to_string())]
    }
}

/// Creates the topics that are missing (with `room_partitions` for room events when given),
/// checks that existing ones carry the settings of [`Topic::config`] (an existing topic with,
/// say, the wrong retention is an error naming it: it could silently lose the log), and reports
/// each topic's partition count as the broker sees it.
pub async fn ensure_topics(
    brokers: &str,
    room_partitions: Option<i32>,
    replication: Replication,
    timeout: Duration,
) -> Result<Vec<(Topic, TopicState)>, SchemaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let specs: Vec<(Topic, i32)> = Topic::ALL
        .iter()
        .map(|&t| {
            let partitions = match (t, room_partitions) {
                (Topic::RoomEvents, Some(p)) => p,
                _ => t.default_partitions(),
            };
            (t, partitions)
        })
        .collect();
    let extra = replication.config();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|&(topic, partitions)| {
            let base = NewTopic::new(
                topic.name(),
                partitions,
                TopicReplication::Fixed(replication.0),
            );
            let base = extra.iter().fold(base, |nt, (k, v)| nt.set(k, v));
            topic.config().iter().fold(base, |nt, (k, v)| nt.set(k, v))
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin.create_topics(new_topics.iter(), &options).await?;
    let mut created = std::collections::HashSet::new();
    for result in results {
        match result {
            Ok(name) => {
                created.insert(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(SchemaError::TopicCreation {
                    topic: name,
                    reason: code.to_string(),
                });
            }
        }
    }
    check_configs(&admin, &options, &extra).await?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let mut states = Vec::new();
    for (topic, _) in specs {
        let partitions = partition_count(&consumer, topic.name(), timeout)?;
        let state = if created.contains(topic.name()) {
            TopicState::Created { partitions }
        } else {
            TopicState::Existed { partitions }
        };
        states.push((topic, state));
    }
    Ok(states)
}

async fn check_configs(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    extra: &[(&'static str, String)],
) -> Result<(), SchemaError> {
    let resources: Vec<ResourceSpecifier<'_>> = Topic::ALL
        .iter()
        .map(|t| ResourceSpecifier::Topic(t.name()))
        .collect();
    let described = admin.describe_configs(resources.iter(), options).await?;
    for (topic, result) in Topic::ALL.iter().zip(described) {
        let resource = result.map_err(|code| SchemaError::TopicCreation {
            topic: topic.name().to_string(),
            reason: format!("cannot read its configuration: {code}"),
        })?;
        let entries = resource.entry_map();
        let wanted_all = topic
            .config()
            .iter()
            .map(|(k, v)| (*k, *v))
            .chain(extra.iter().map(|(k, v)| (*k, v.as_str())));
        for (key, wanted) in wanted_all {
            let actual = entries.get(key).and_then(|e| e.value.as_deref());
            if actual != Some(wanted) {
                return Err(SchemaError::TopicCreation {
                    topic: topic.name().to_string(),
                    reason: format!(
                        "exists with {key}={} but the platform needs {key}={wanted}; \
                         recreate the topic (or fix its config) before using it",
                        actual.unwrap_or("<unset>")
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Partition count of `topic` as the broker reports it (0 when the topic does not exist).
pub fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, SchemaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0))
}

/// Where `consumer` continues in each partition assigned to it: after the last record it handed
/// out, or, once it reported end-of-partition (`enable.partition.eof`), past the transaction
/// markers that end a transactional log. Markers take offsets but are never handed out, so
/// "the last record's offset + 1" stops short of the high watermark of such a log; this does not.
pub fn positions<C, K>(consumer: &K) -> Vec<(String, i32, i64)>
where
    C: rdkafka::consumer::ConsumerContext,
    K: Consumer<C>,
{
    let Ok(list) = consumer.position() else {
        return Vec::new();
    };
    list.elements()
        .iter()
        .filter_map(|e| {
            let offset = e.offset().to_raw().filter(|o| *o >= 0)?;
            Some((e.topic().to_string(), e.partition(), offset))
        })
        .collect()
}

/// The context of every consumer that asks for end-of-partition events
/// (`enable.partition.eof`): those arrive as errors, and are the normal end of a read, not
/// something to log at error level each time a reader catches up.
pub struct ReaderContext;

impl rdkafka::ClientContext for ReaderContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(%error, reason, "librdkafka");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}
