use std::net::SocketAddr;
use std::path::PathBuf;

use platform::config::env_or;

/// Settings of the read API, read once from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CHAT_QUERY_LISTEN`, default `127.0.0.1:8091`.
    pub listen: SocketAddr,
    pub mongo_url: String,
    /// `CHAT_MONGO_DB`, default `chat` (the projector's database).
    pub mongo_db: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub pg_url: String,
    /// `CHAT_DIRECTORY_PG_SCHEMA`, default `directory`: the user directory projection.
    pub directory_schema: String,
    /// `CHAT_JWKS_URL`, default `http://127.0.0.1:8090/v1/auth/jwks`: the commands tier's keys.
    pub jwks_url: String,
    /// `CHAT_FILES_DIR`: the file store the commands tier writes (same default).
    pub files_dir: PathBuf,
    /// `CHAT_OPENAPI_FILE`, default `$CHAT_STATE_DIR/data/openapi.json`: the whole platform's
    /// OpenAPI document, which `deploy/local` writes from every tier's part (no tier links
    /// another); without it `/v1/openapi.json` serves this tier's part alone.
    pub openapi_file: PathBuf,
    /// `CHAT_LIMIT_<NAME>` = `<per second>/<burst>`: the budgets of `crate::limits`.
    pub budgets: crate::limits::Budgets,
}

impl Config {
    pub fn from_env() -> Result<Self, platform::ConfigError> {
        let shared = platform::config::Shared::from_env()?;
        Ok(Self {
            listen: env_or(
                "CHAT_QUERY_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 8091)),
            )?,
            mongo_url: shared.mongo_url.clone(),
            mongo_db: shared.mongo_db.clone(),
            redis_url: shared.redis_url.clone(),
            redis_prefix: shared.redis_prefix.clone(),
            pg_url: shared.pg_url.clone(),
            directory_schema: shared.directory_schema.clone(),
            jwks_url: shared.jwks_url.clone(),
            files_dir: env_or("CHAT_FILES_DIR", shared.state_dir.join("files"))?,
            budgets: crate::limits::Budgets::from_env()?,
            openapi_file: env_or(
                "CHAT_OPENAPI_FILE",
                shared.state_dir.join("data/openapi.json"),
            )?,
        })
    }
}
