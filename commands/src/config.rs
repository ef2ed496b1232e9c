use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use platform::config::{env_or, env_string};

/// Settings of the commands tier, read once from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CHAT_COMMANDS_LISTEN`, default `127.0.0.1:8090`.
    pub listen: SocketAddr,
    /// `CHAT_COMMANDS_ADVERTISE_URL`: how other instances reach this one to forward commands
    /// for rooms it owns; default `http://<listen>`.
    pub advertise_url: String,
    /// `CHAT_KAFKA_BROKERS`, default `127.0.0.1:9092`.
    pub brokers: String,
    /// `CHAT_REGISTRY_URL`, default [`schemas::DEFAULT_REGISTRY_URL`].
    pub registry_url: String,
    /// `CHAT_PG_URL`, default `postgres://postgres@127.0.0.1:5432/chat`.
    pub pg_url: String,
    /// `CHAT_COMMANDS_PG_SCHEMA`, default `identity`: PostgreSQL schema of users, sessions and
    /// the outbox.
    pub pg_schema: String,
    /// `CHAT_REDIS_URL`, default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// `CHAT_REDIS_PREFIX`, default empty: prefix of every Redis key (isolates test stacks).
    pub redis_prefix: String,
    /// `CHAT_COMMANDS_GROUP`, default `chat-commands`: the consumer group whose partition
    /// assignment decides which instance writes which rooms.
    pub group_id: String,
    /// `CHAT_JWT_PRIVATE_KEY_FILE`: RSA private key (PEM, PKCS#8 or PKCS#1) that signs access
    /// tokens; `deploy/local/up` generates one for development. Default
    /// `$CHAT_STATE_DIR/keys/jwt-private.pem`.
    pub jwt_private_key_file: PathBuf,
    /// `CHAT_JWT_PRIVATE_KEY`: the same key as PEM text (secret stores often inject env vars);
    /// when set it wins over the file.
    pub jwt_private_key_pem: Option<String>,
    /// `CHAT_ACCESS_TOKEN_TTL_SECS`, default 900.
    pub access_token_ttl: Duration,
    /// `CHAT_REFRESH_TOKEN_TTL_SECS`, default 30 days: how long a refresh token lives unused.
    pub refresh_token_ttl: Duration,
    /// `CHAT_SESSION_MAX_SECS`, default 90 days: a session's absolute lifetime from its login,
    /// however often it refreshes (then the user logs in again).
    pub session_lifetime: Duration,
    /// `CHAT_LIMIT_<NAME>` = `<per second>/<burst>`: the budgets of `crate::limits`.
    pub budgets: crate::limits::Budgets,
    /// `CHAT_MAX_BODY_BYTES`, default 64 KiB: largest accepted JSON body.
    pub max_body_bytes: usize,
    /// `CHAT_COMMAND_TIMEOUT_MS`, default 10000: how long a command may wait for its room's
    /// writer (catching up after a rebalance) and the broker's acknowledgement.
    pub command_timeout: Duration,
    /// `CHAT_CALL_RING_SECS`, default 30: how long a call rings unanswered before it ends
    /// (`CallEnded` reason `unanswered`).
    pub call_ring: Duration,
    /// `CHAT_INTERNAL_SECRET_FILE`, default `$CHAT_STATE_DIR/keys/internal-secret`: admits the
    /// other tiers' requests on the platform's own behalf (`platform::internal`); without the
    /// file those requests are refused.
    pub internal_secret_file: PathBuf,
    /// `CHAT_FILES_DIR`, default `$CHAT_STATE_DIR/files`: where uploaded bytes are stored.
    pub files_dir: PathBuf,
    /// `CHAT_MAX_UPLOAD_BYTES`, default 25 MiB.
    pub max_upload_bytes: u64,
    /// `CHAT_UPLOAD_QUOTA_BYTES`, default 1 GiB: what one user's stored files may add up to.
    pub upload_quota_bytes: u64,
    /// `CHAT_UPLOAD_GRACE_SECS`, default 24 h: an upload no post named by then is deleted.
    pub upload_grace: Duration,
    /// `CHAT_ARGON2_M_KIB`, default 19456 (OWASP's minimum for argon2id: m=19 MiB, t=2, p=1).
    pub argon2_m_kib: u32,
}

impl Config {
    pub fn from_env() -> Result<Self, platform::ConfigError> {
        let shared = platform::config::Shared::from_env()?;
        let listen: SocketAddr = env_or(
            "CHAT_COMMANDS_LISTEN",
            SocketAddr::from(([127, 0, 0, 1], 8090)),
        )?;
        Ok(Self {
            listen,
            advertise_url: env_string("CHAT_COMMANDS_ADVERTISE_URL", &format!("http://{listen}")),
            brokers: shared.brokers.clone(),
            registry_url: env_string("CHAT_REGISTRY_URL", schemas::DEFAULT_REGISTRY_URL),
            pg_url: shared.pg_url.clone(),
            pg_schema: env_string("CHAT_COMMANDS_PG_SCHEMA", "identity"),
            redis_url: shared.redis_url.clone(),
            redis_prefix: shared.redis_prefix.clone(),
            group_id: env_string("CHAT_COMMANDS_GROUP", "chat-commands"),
            jwt_private_key_file: env_or(
                "CHAT_JWT_PRIVATE_KEY_FILE",
                shared.state_dir.join("keys/jwt-private.pem"),
            )?,
            jwt_private_key_pem: std::env::var("CHAT_JWT_PRIVATE_KEY")
                .ok()
                .filter(|k| !k.trim().is_empty()),
            access_token_ttl: Duration::from_secs(env_or("CHAT_ACCESS_TOKEN_TTL_SECS", 900u64)?),
            refresh_token_ttl: Duration::from_secs(env_or(
                "CHAT_REFRESH_TOKEN_TTL_SECS",
                30 * 24 * 3600u64,
            )?),
            session_lifetime: Duration::from_secs(env_or(
                "CHAT_SESSION_MAX_SECS",
                90 * 24 * 3600u64,
            )?),
            budgets: crate::limits::Budgets::from_env()?,
            max_body_bytes: env_or("CHAT_MAX_BODY_BYTES", 64 * 1024)?,
            command_timeout: Duration::from_millis(env_or("CHAT_COMMAND_TIMEOUT_MS", 10_000u64)?),
            internal_secret_file: env_or(
                "CHAT_INTERNAL_SECRET_FILE",
                shared.state_dir.join("keys/internal-secret"),
            )?,
            call_ring: Duration::from_secs(env_or("CHAT_CALL_RING_SECS", 30u64)?),
            argon2_m_kib: env_or("CHAT_ARGON2_M_KIB", 19_456u32)?,
            files_dir: env_or("CHAT_FILES_DIR", shared.state_dir.join("files"))?,
            max_upload_bytes: env_or("CHAT_MAX_UPLOAD_BYTES", 25 * 1024 * 1024u64)?,
            upload_quota_bytes: env_or("CHAT_UPLOAD_QUOTA_BYTES", 1024 * 1024 * 1024u64)?,
            upload_grace: Duration::from_secs(env_or("CHAT_UPLOAD_GRACE_SECS", 24 * 3600u64)?),
        })
    }
}
