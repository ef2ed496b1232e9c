use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use platform::config::env_or;

/// Settings of the signaling tier, read once from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CHAT_SIGNALING_LISTEN`, default `127.0.0.1:8093`.
    pub listen: SocketAddr,
    pub redis_url: String,
    pub redis_prefix: String,
    pub jwks_url: String,
    /// `CHAT_KAFKA_BROKERS`: the call state follows `chat.room-events`.
    pub brokers: String,
    /// `CHAT_REGISTRY_URL`, default [`schemas::DEFAULT_REGISTRY_URL`].
    pub registry_url: String,
    /// `CHAT_FAST_CHANNEL`, default the pattern of every room's fast channel under
    /// `CHAT_REDIS_PREFIX` (`platform::cache::room_events_pattern`): where call events arrive
    /// ahead of the log.
    pub fast_channel: String,
    /// `CHAT_SIGNALING_GROUP`, default `chat-signaling`: the consumer group of the call state.
    pub group_id: String,
    /// `CHAT_COMMANDS_URL`, default `http://127.0.0.1:8090`: where participants whose sockets
    /// all dropped are taken out of their calls.
    pub commands_url: String,
    /// `CHAT_INTERNAL_SECRET_FILE`, default `$CHAT_STATE_DIR/keys/internal-secret`.
    pub internal_secret_file: PathBuf,
    /// `CHAT_MAX_SIGNAL_BYTES`, default 16 KiB: the largest relayed payload (an SDP with many
    /// codecs and candidates is a few KiB).
    pub max_signal_bytes: usize,
    /// `CHAT_TURN_SECRET_FILE`, default `$CHAT_STATE_DIR/keys/turn-secret`: coturn's
    /// `static-auth-secret`, shared by this tier and coturn only.
    pub turn_secret_file: PathBuf,
    /// `CHAT_TURN_URLS`, comma-separated, default `turn:127.0.0.1:3478?transport=udp` and the
    /// same over TCP: what clients are told to use.
    pub turn_urls: Vec<String>,
    /// `CHAT_TURN_TTL_SECS`, default 3600: how long credentials work (a call in progress keeps
    /// its allocation; new ones need fresh credentials).
    pub turn_ttl: Duration,
    /// `CHAT_JANUS_URL`, default `http://127.0.0.1:8095/janus`: the SFU's HTTP API (reached by
    /// this tier only).
    pub janus_url: String,
    /// `CHAT_JANUS_SECRET_FILE`, default `$CHAT_STATE_DIR/keys/janus-secret`: Janus's API secret
    /// (also the VideoRoom admin key), shared by Janus and this tier only. Without it group
    /// calls are refused (`sfu_unavailable`).
    pub janus_secret_file: PathBuf,
    /// `CHAT_SFU_BITRATE`, default 1,000,000: bits per second a publisher is asked to stay
    /// under.
    pub sfu_bitrate: u32,
    /// `CHAT_LIMIT_<NAME>` = `<per second>/<burst>`: the budgets of `crate::limits`.
    pub budgets: crate::limits::Budgets,
}

impl Config {
    pub fn from_env() -> Result<Self, platform::ConfigError> {
        let shared = platform::config::Shared::from_env()?;
        let urls: String = env_or(
            "CHAT_TURN_URLS",
            "turn:127.0.0.1:3478?transport=udp,turn:127.0.0.1:3478?transport=tcp".to_string(),
        )?;
        Ok(Self {
            listen: env_or(
                "CHAT_SIGNALING_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 8093)),
            )?,
            redis_url: shared.redis_url.clone(),
            redis_prefix: shared.redis_prefix.clone(),
            jwks_url: shared.jwks_url.clone(),
            brokers: shared.brokers.clone(),
            registry_url: platform::config::env_string(
                "CHAT_REGISTRY_URL",
                schemas::DEFAULT_REGISTRY_URL,
            ),
            fast_channel: platform::config::env_string(
                "CHAT_FAST_CHANNEL",
                &platform::cache::room_events_pattern(&shared.redis_prefix),
            ),
            group_id: platform::config::env_string("CHAT_SIGNALING_GROUP", "chat-signaling"),
            commands_url: platform::config::env_string(
                "CHAT_COMMANDS_URL",
                "http://127.0.0.1:8090",
            ),
            internal_secret_file: env_or(
                "CHAT_INTERNAL_SECRET_FILE",
                shared.state_dir.join("keys/internal-secret"),
            )?,
            max_signal_bytes: env_or("CHAT_MAX_SIGNAL_BYTES", 16 * 1024usize)?,
            turn_secret_file: env_or(
                "CHAT_TURN_SECRET_FILE",
                shared.state_dir.join("keys/turn-secret"),
            )?,
            turn_urls: urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect(),
            turn_ttl: Duration::from_secs(env_or("CHAT_TURN_TTL_SECS", 3600u64)?.max(60)),
            janus_url: platform::config::env_string(
                "CHAT_JANUS_URL",
                "http://127.0.0.1:8095/janus",
            ),
            janus_secret_file: env_or(
                "CHAT_JANUS_SECRET_FILE",
                shared.state_dir.join("keys/janus-secret"),
            )?,
            sfu_bitrate: env_or("CHAT_SFU_BITRATE", 1_000_000u32)?,
            budgets: crate::limits::Budgets::from_env()?,
        })
    }
}
