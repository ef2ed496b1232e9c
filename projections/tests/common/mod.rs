//! A private read side for projector tests: its own broker (through `deploy/local/up`), so a
//! test's log holds only its own events, and its own database / key prefix / schema in the
//! shared MongoDB-protocol server, Redis, ClickHouse and PostgreSQL, so tests can kill
//! projectors and compare whole stores.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use projections::model::Model;
use rdkafka::consumer::{BaseConsumer, Consumer};
use schemas::topics::Topic;
use test_support::{PrivateStack, Service, env, free_port, unique_ident, wait_progressing};

pub struct ReadSide {
    _stack: PrivateStack,
    pub brokers: String,
    pub mongo_url: String,
    pub mongo_db: String,
    pub redis_prefix: String,
    pub clickhouse_db: String,
    pub directory_schema: String,
    pub group_prefix: String,
}

pub struct Projections {
    pub service: Service,
    pub url: String,
}

impl ReadSide {
    pub fn new() -> anyhow::Result<Self> {
        let port = free_port();
        let stack = PrivateStack::new(&[("CHAT_KAFKA_PORT", port.to_string())])?;
        stack.up(&["broker"])?;
        let name = unique_ident("rs");
        Ok(Self {
            _stack: stack,
            brokers: format!("127.0.0.1:{port}"),
            mongo_url: env::mongo_url(),
            mongo_db: name.clone(),
            redis_prefix: format!("{name}:"),
            clickhouse_db: name.clone(),
            directory_schema: name.clone(),
            group_prefix: format!("{name}-"),
        })
    }

    pub async fn writer(&self) -> anyhow::Result<test_support::produce::Writer> {
        test_support::produce::Writer::new(&self.brokers, &env::registry_url()).await
    }

    /// Starts a projections process running `projectors` (comma list) with `batch` events per batch.
    pub fn start(&self, projectors: &str, batch: usize) -> anyhow::Result<Projections> {
        self.start_with(projectors, batch, &[])
    }

    /// [`ReadSide::start`] with `extra` settings over the side's own.
    pub fn start_with(
        &self,
        projectors: &str,
        batch: usize,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Projections> {
        let port = free_port();
        let env: Vec<(String, String)> = [
            ("CHAT_PROJECTIONS_LISTEN", format!("127.0.0.1:{port}")),
            ("CHAT_PROJECTORS", projectors.to_string()),
            ("CHAT_KAFKA_BROKERS", self.brokers.clone()),
            ("CHAT_REGISTRY_URL", env::registry_url()),
            ("CHAT_MONGO_URL", self.mongo_url.clone()),
            ("CHAT_MONGO_DB", self.mongo_db.clone()),
            ("CHAT_REDIS_URL", env::redis_url()),
            ("CHAT_REDIS_PREFIX", self.redis_prefix.clone()),
            ("CHAT_CLICKHOUSE_URL", env::clickhouse_url()),
            ("CHAT_CLICKHOUSE_DB", self.clickhouse_db.clone()),
            ("CHAT_PG_URL", env::pg_url()),
            ("CHAT_DIRECTORY_PG_SCHEMA", self.directory_schema.clone()),
            ("CHAT_PROJECTION_GROUP_PREFIX", self.group_prefix.clone()),
            ("CHAT_PROJECTION_BATCH", batch.to_string()),
            ("CHAT_PROJECTION_FETCH_WAIT_MS", "5".to_string()),
            ("RUST_LOG", "info".to_string()),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Projections {
            service: Service::spawn("projections", env)?,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// High watermark of every non-empty partition of `topics`.
    pub fn ends(&self, topics: &[Topic]) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
        let consumer: BaseConsumer = schemas::kafka::watermark_config(&self.brokers).create()?;
        let mut ends = BTreeMap::new();
        for topic in topics {
            let count =
                schemas::kafka::partition_count(&consumer, topic.name(), Duration::from_secs(10))?;
            for p in 0..count {
                let (_, high) =
                    consumer.fetch_watermarks(topic.name(), p, Duration::from_secs(10))?;
                if high > 0 {
                    ends.insert((topic.name().to_string(), p), high);
                }
            }
        }
        Ok(ends)
    }

    pub async fn model(&self, topics: &[Topic]) -> anyhow::Result<Model> {
        let codec = schemas::EventCodec::new(&env::registry_url())?;
        let events =
            projections::verify::read_log(&self.brokers, &codec, topics, |_, _| {}).await?;
        Ok(Model::from_events(&events))
    }

    pub async fn mongo(&self) -> anyhow::Result<mongodb::Database> {
        Ok(mongodb::Client::with_uri_str(&self.mongo_url)
            .await?
            .database(&self.mongo_db))
    }
}

impl Projections {
    /// `projection_position` gauges of one projector: (topic, partition) -> next offset.
    pub async fn positions(&self, projector: &str) -> BTreeMap<(String, i32), i64> {
        let Ok(response) = reqwest::get(format!("{}/metrics", self.url)).await else {
            return BTreeMap::new();
        };
        let text = response.text().await.unwrap_or_default();
        let mut positions = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("projection_position{"))
        {
            let labels = &line[line.find('{').unwrap() + 1..line.find('}').unwrap()];
            let label = |name: &str| {
                labels.split(',').find_map(|kv| {
                    kv.strip_prefix(&format!("{name}=\""))
                        .map(|v| v.trim_end_matches('"').to_string())
                })
            };
            if label("projector").as_deref() != Some(projector) {
                continue;
            }
            let (Some(topic), Some(partition), Some(value)) =
                (label("topic"), label("partition"), line.rsplit(' ').next())
            else {
                continue;
            };
            if let (Ok(p), Ok(v)) = (partition.parse(), value.parse::<f64>()) {
                positions.insert((topic, p), v as i64);
            }
        }
        positions
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .ok()
            .map(|r| r.text());
        let text = match text {
            Some(t) => t.await.unwrap_or_default(),
            None => String::new(),
        };
        text.lines()
            .find(|l| l.starts_with(name_and_labels))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until `projector` has read every partition of its topics to the end.
    pub async fn caught_up(
        &self,
        side: &ReadSide,
        projector: &str,
        topics: &[Topic],
    ) -> anyhow::Result<()> {
        let ends = side.ends(topics)?;
        // Progress = records applied (each partition counted up to its end).
        let total: i64 = ends.values().sum();
        wait_progressing(
            &format!("{projector} catching up"),
            total,
            Duration::from_secs(120),
            || async {
                let positions = self.positions(projector).await;
                Some(
                    ends.iter()
                        .map(|(k, high)| positions.get(k).copied().unwrap_or(0).min(*high))
                        .sum(),
                )
            },
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}\n{}",
                self.service
                    .output()
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }
}
