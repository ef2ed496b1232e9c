use std::net::SocketAddr;
use std::time::Duration;

use platform::config::{env_or, env_string};

/// Settings of a fan-out node, read once from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CHAT_WS_LISTEN`, default `127.0.0.1:8092`.
    pub listen: SocketAddr,
    /// `CHAT_KAFKA_BROKERS`, default `127.0.0.1:9092`.
    pub brokers: String,
    /// `CHAT_REGISTRY_URL`, default [`schemas::DEFAULT_REGISTRY_URL`].
    pub registry_url: String,
    /// `CHAT_REDIS_URL` / `CHAT_REDIS_PREFIX`: token revocation marks and the presence
    /// projector's room heads (the snapshot the log tail starts from).
    pub redis_url: String,
    pub redis_prefix: String,
    /// `CHAT_JWKS_URL`, default `http://127.0.0.1:8090/v1/auth/jwks`.
    pub jwks_url: String,
    /// `CHAT_COMMANDS_URL`, default `http://127.0.0.1:8090`: `send` frames become HTTP commands
    /// there, so a socket write gets exactly the HTTP validation.
    pub commands_url: String,
    /// `CHAT_SIGNALING_URL`, default `http://127.0.0.1:8093`: `call.signal` frames go to its
    /// relay.
    pub signaling_url: String,
    /// `CHAT_WS_ROOM_BUFFER`, default 512: recent events kept per room for `since_seq` resumes.
    pub room_buffer: usize,
    /// `CHAT_WS_WARM_RECORDS`, default 20000: records per partition read back at start-up
    /// before the presence projector's checkpoint, so resumes right after a node restart find
    /// their gap.
    pub warm_records: i64,
    /// `CHAT_WS_QUEUE`, default 1024: frames waiting for one socket before it counts as fallen
    /// behind (resync, then close).
    pub socket_queue: usize,
    /// `CHAT_WS_MAX_FRAME`, default 65536 bytes: a larger client frame closes the socket (1009).
    pub max_frame: usize,
    /// `CHAT_WS_PING_SECS`, default 20: server pings; `CHAT_WS_IDLE_SECS`, default 60: a socket
    /// silent for that long (no frame, no pong) is closed.
    pub ping_every: Duration,
    pub idle_timeout: Duration,
    /// `CHAT_WS_AUTH_SECS`, default 10: time to send the token frame when the URL has none.
    pub auth_timeout: Duration,
    /// `CHAT_WS_FETCH_WAIT_MS`, default 50: how long the tail's fetches wait at the broker.
    /// Live events reach sockets through the fast channel; the tail repairs its losses, so it
    /// can be a little slower. Every fetch costs the local broker CPU (measured: one consumer
    /// fetching every 5 ms kept it 76% busy on an idle stack, every 50 ms 16%), and that CPU is
    /// what every acknowledgement, hence every delivery, waits for under load.
    pub fetch_wait_ms: u32,
    /// `CHAT_WS_PRESENCE_TTL_SECS` (45): a connection whose node stopped refreshing it counts
    /// as gone after this long (the user goes offline when it was their last).
    pub presence_ttl: Duration,
    /// `CHAT_WS_MAX_SOCKETS_PER_USER`, default 20: sockets one user may hold on a node (tabs,
    /// devices); one more is refused with `too_many_sockets` and closed (1008).
    pub max_sockets_per_user: usize,
    /// `CHAT_WS_MAX_SUBSCRIPTIONS`, default 200: rooms one socket may subscribe to.
    pub max_subscriptions: usize,
    /// `CHAT_WS_INTEREST_LINGER_SECS`, default 60: how long the node keeps following a room
    /// (its fast channel, and its partition of the log) after its last subscriber here left,
    /// so a client that reconnects finds it still followed (`crate::interest`).
    pub interest_linger: Duration,
    /// `CHAT_LIMIT_FRAMES`, `CHAT_LIMIT_POLLS`: the budgets of `crate::limits`.
    pub budgets: crate::limits::Budgets,
}

impl Config {
    pub fn from_env() -> Result<Self, platform::ConfigError> {
        let shared = platform::config::Shared::from_env()?;
        Ok(Self {
            listen: env_or("CHAT_WS_LISTEN", SocketAddr::from(([127, 0, 0, 1], 8092)))?,
            brokers: shared.brokers.clone(),
            registry_url: env_string("CHAT_REGISTRY_URL", schemas::DEFAULT_REGISTRY_URL),
            redis_url: shared.redis_url.clone(),
            redis_prefix: shared.redis_prefix.clone(),
            jwks_url: shared.jwks_url.clone(),
            commands_url: env_string("CHAT_COMMANDS_URL", "http://127.0.0.1:8090"),
            signaling_url: env_string("CHAT_SIGNALING_URL", "http://127.0.0.1:8093"),
            room_buffer: env_or("CHAT_WS_ROOM_BUFFER", 512usize)?.max(1),
            warm_records: env_or("CHAT_WS_WARM_RECORDS", 20_000i64)?.max(0),
            socket_queue: env_or("CHAT_WS_QUEUE", 1024usize)?.max(8),
            max_frame: env_or("CHAT_WS_MAX_FRAME", 65_536usize)?,
            ping_every: Duration::from_secs(env_or("CHAT_WS_PING_SECS", 20u64)?.max(1)),
            idle_timeout: Duration::from_secs(env_or("CHAT_WS_IDLE_SECS", 60u64)?.max(2)),
            auth_timeout: Duration::from_secs(env_or("CHAT_WS_AUTH_SECS", 10u64)?.max(1)),
            fetch_wait_ms: env_or("CHAT_WS_FETCH_WAIT_MS", 50u32)?,
            presence_ttl: Duration::from_secs(env_or("CHAT_WS_PRESENCE_TTL_SECS", 45u64)?.max(1)),
            max_sockets_per_user: env_or("CHAT_WS_MAX_SOCKETS_PER_USER", 20usize)?.max(1),
            max_subscriptions: env_or("CHAT_WS_MAX_SUBSCRIPTIONS", 200usize)?.max(1),
            interest_linger: Duration::from_secs(env_or("CHAT_WS_INTEREST_LINGER_SECS", 60u64)?),
            budgets: crate::limits::Budgets::from_env()?,
        })
    }
}
