use std::net::SocketAddr;

use platform::config::{env_or, env_string};

/// Settings, read once from the environment at start-up.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `CHAT_REGISTRY_LISTEN`, default `127.0.0.1:8081` (Confluent's usual port).
    pub listen: SocketAddr,
    /// `CHAT_REGISTRY_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/chat`.
    pub database_url: String,
    /// `CHAT_REGISTRY_PG_SCHEMA`, default `schema_registry`: the PostgreSQL schema holding the
    /// tables, so several registries (tests) can share one database without seeing each other.
    pub pg_schema: String,
    /// `CHAT_REGISTRY_MAX_BODY_BYTES`, default 1 MiB: largest accepted request body.
    pub max_body_bytes: usize,
}

impl RegistryConfig {
    pub fn from_env() -> Result<Self, crate::RegistryError> {
        let pg_schema = env_string("CHAT_REGISTRY_PG_SCHEMA", "schema_registry");
        if pg_schema.is_empty()
            || pg_schema.len() > 63
            || !pg_schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || pg_schema.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(crate::RegistryError::Config(format!(
                "CHAT_REGISTRY_PG_SCHEMA={pg_schema:?} must be a lowercase SQL identifier"
            )));
        }
        Ok(Self {
            listen: env_or(
                "CHAT_REGISTRY_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 8081)),
            )?,
            database_url: env_string(
                "CHAT_REGISTRY_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/chat",
            ),
            pg_schema,
            max_body_bytes: env_or("CHAT_REGISTRY_MAX_BODY_BYTES", 1 << 20)?,
        })
    }
}
