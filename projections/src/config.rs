use std::net::SocketAddr;
use std::time::Duration;

use platform::config::{env_or, env_string};

/// Settings of the projections process, read once from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CHAT_PROJECTIONS_LISTEN`, default `127.0.0.1:8094`: ops endpoints.
    pub listen: SocketAddr,
    /// `CHAT_PROJECTORS`, default `mongo,redis,clickhouse,directory`: which projectors this process runs (comma list).
    pub projectors: Vec<String>,
    pub brokers: String,
    pub registry_url: String,
    /// `CHAT_MONGO_URL` / `CHAT_MONGO_DB` (default `chat`).
    pub mongo_url: String,
    pub mongo_db: String,
    /// `CHAT_CLICKHOUSE_URL` / `CHAT_CLICKHOUSE_DB` (default `chat`): the analytics model.
    pub clickhouse_url: String,
    pub clickhouse_db: String,
    /// `CHAT_REDIS_URL` / `CHAT_REDIS_PREFIX` (default empty): the presence read model.
    pub redis_url: String,
    pub redis_prefix: String,
    /// `CHAT_PG_URL` and `CHAT_DIRECTORY_PG_SCHEMA` (default `directory`): the user directory.
    pub pg_url: String,
    pub directory_schema: String,
    /// `CHAT_PROJECTION_GROUP_PREFIX`, default `chat-projection-`: each projector's consumer
    /// group is the prefix plus its name (its positions are committed there for lag reports).
    pub group_prefix: String,
    /// `CHAT_PROJECTION_BATCH` (default 500) and `CHAT_PROJECTION_BATCH_MS` (default 50): a
    /// batch is applied when it is this big or this old.
    pub max_batch: usize,
    pub max_wait: Duration,
    /// `CHAT_PROJECTION_FETCH_WAIT_MS`, default 250: read models tolerate a quarter second of
    /// lag, and each projector's fetches cost the local broker CPU (measured on an idle stack:
    /// the four projectors fetching every 50 ms kept it 76% busy, which every write then waited
    /// behind). Rebuilds use their own short wait.
    pub fetch_wait_ms: u64,
}

impl Config {
    pub fn from_env() -> Result<Self, platform::ConfigError> {
        let shared = platform::config::Shared::from_env()?;
        Ok(Self {
            listen: env_or(
                "CHAT_PROJECTIONS_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 8094)),
            )?,
            projectors: env_string("CHAT_PROJECTORS", "mongo,redis,clickhouse,directory")
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            brokers: shared.brokers.clone(),
            registry_url: env_string("CHAT_REGISTRY_URL", schemas::DEFAULT_REGISTRY_URL),
            mongo_url: shared.mongo_url.clone(),
            mongo_db: shared.mongo_db.clone(),
            clickhouse_url: env_string("CHAT_CLICKHOUSE_URL", "http://127.0.0.1:8123"),
            clickhouse_db: env_string("CHAT_CLICKHOUSE_DB", "chat"),
            redis_url: shared.redis_url.clone(),
            redis_prefix: shared.redis_prefix.clone(),
            pg_url: shared.pg_url.clone(),
            directory_schema: shared.directory_schema.clone(),
            group_prefix: env_string("CHAT_PROJECTION_GROUP_PREFIX", "chat-projection-"),
            max_batch: env_or("CHAT_PROJECTION_BATCH", 500usize)?,
            max_wait: Duration::from_millis(env_or("CHAT_PROJECTION_BATCH_MS", 50u64)?),
            fetch_wait_ms: env_or("CHAT_PROJECTION_FETCH_WAIT_MS", 250u64)?,
        })
    }
}
