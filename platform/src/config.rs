//! Environment-variable configuration.
//!
//! Every service parses its settings once at start-up into a typed struct; these helpers give
//! them one behaviour: unset means the documented default, set-but-unparseable is a start-up
//! error naming the variable (never a silent fallback to the default).

use std::fmt::Display;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
}

/// Default `CHAT_MONGO_URL`: the local stack's MongoDB-protocol server (FerretDB, see
/// `deploy/local`). A real MongoDB deployment sets its own URL, pool and read preference.
pub const LOCAL_MONGO_URL: &str = "mongodb://127.0.0.1:27017/?directConnection=true";

/// The settings several tiers read, each with its one default (the local stack's address).
#[derive(Debug, Clone)]
pub struct Shared {
    /// `CHAT_KAFKA_BROKERS`, default `127.0.0.1:9092`.
    pub brokers: String,
    /// `CHAT_REDIS_URL`, default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// `CHAT_REDIS_PREFIX`, default empty: prefix of every Redis key (isolates test stacks).
    pub redis_prefix: String,
    /// `CHAT_PG_URL`, default `postgres://postgres@127.0.0.1:5432/chat`.
    pub pg_url: String,
    /// `CHAT_MONGO_URL`, default [`LOCAL_MONGO_URL`].
    pub mongo_url: String,
    /// `CHAT_MONGO_DB`, default `chat` (the history projector's database).
    pub mongo_db: String,
    /// `CHAT_DIRECTORY_PG_SCHEMA`, default `directory`: the user directory projection.
    pub directory_schema: String,
    /// `CHAT_JWKS_URL`, default `http://127.0.0.1:8090/v1/auth/jwks`: the commands tier's keys.
    pub jwks_url: String,
    /// `CHAT_STATE_DIR`, default `$HOME/.local/state/chat-platform`: keys, files, documents.
    pub state_dir: PathBuf,
}

impl Shared {
    pub fn from_env() -> Result<Self, ConfigError> {
        let home = std::env::var("HOME").map_or_else(|_| PathBuf::from("."), PathBuf::from);
        Ok(Self {
            brokers: env_string("CHAT_KAFKA_BROKERS", "127.0.0.1:9092"),
            redis_url: env_string("CHAT_REDIS_URL", "redis://127.0.0.1:6379"),
            redis_prefix: env_string("CHAT_REDIS_PREFIX", ""),
            pg_url: env_string("CHAT_PG_URL", "postgres://postgres@127.0.0.1:5432/chat"),
            mongo_url: env_string("CHAT_MONGO_URL", LOCAL_MONGO_URL),
            mongo_db: env_string("CHAT_MONGO_DB", "chat"),
            directory_schema: env_string("CHAT_DIRECTORY_PG_SCHEMA", "directory"),
            jwks_url: env_string("CHAT_JWKS_URL", "http://127.0.0.1:8090/v1/auth/jwks"),
            state_dir: env_or("CHAT_STATE_DIR", home.join(".local/state/chat-platform"))?,
        })
    }
}

/// Reads `name`, falling back to `default` when it is unset or empty.
pub fn env_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().parse::<T>().map_err(|e| ConfigError::Invalid {
                name: name.to_string(),
                value: value.clone(),
                reason: e.to_string(),
            })
        }
        _ => Ok(default),
    }
}

/// Reads a string variable with a default.
pub fn env_string(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_string(),
        _ => default.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_gives_default_and_garbage_names_the_variable() {
        // Variable names unique to this test so parallel tests cannot interfere.
        assert_eq!(env_or("PLATFORM_TEST_UNSET_VAR", 7u16).unwrap(), 7);
        // SAFETY: the variable is only touched by this test.
        unsafe { std::env::set_var("PLATFORM_TEST_BAD_PORT", "seventy") };
        let err = env_or("PLATFORM_TEST_BAD_PORT", 7u16).unwrap_err();
        assert!(err.to_string().contains("PLATFORM_TEST_BAD_PORT"), "{err}");
        unsafe { std::env::set_var("PLATFORM_TEST_GOOD_PORT", " 8081 ") };
        assert_eq!(env_or("PLATFORM_TEST_GOOD_PORT", 7u16).unwrap(), 8081);
    }
}
