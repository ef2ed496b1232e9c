//! The Redis connection every tier uses.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A self-reconnecting Redis connection. Answers may take up to 5 s before they count as
/// failed: the library's default of half a second turned a busy machine (a writer catching up
/// on both cores) into spurious "Redis unavailable" errors.
pub async fn connect(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    redis::Client::open(url)?
        .get_connection_manager_with_config(config)
        .await
}

/// The readiness probe every tier runs against Redis, in the form `/readyz` reports.
pub async fn ping(redis: &ConnectionManager) -> Result<(), String> {
    let mut redis = redis.clone();
    redis::cmd("PING")
        .query_async::<String>(&mut redis)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The Redis pub/sub channel of one room on the fast path (ARCHITECTURE.md,
/// "durable-then-notify"): once the broker acknowledged a room event, the commands tier
/// publishes the record's exact value (Confluent Avro) on its room's channel, and fan-out nodes
/// deliver whichever copy, this or the log's, comes first. One channel per room because a node
/// subscribes only to the rooms it has sockets for (interest routing): with one channel for
/// all, every node received the whole platform's traffic. Losing a message here loses nothing:
/// the log brings it.
pub fn room_events_channel(prefix: &str, room_id: &str) -> String {
    format!("{prefix}fanout:room-events:{room_id}")
}

/// The pattern that matches every room's [`room_events_channel`], for a tier that follows
/// every room (signaling applies every room's call events ahead of the log).
pub fn room_events_pattern(prefix: &str) -> String {
    format!("{prefix}fanout:room-events:*")
}

/// The Redis pub/sub channel that carries relayed call signals (offers, answers, ICE
/// candidates) from the signaling tier to the fan-out nodes; each node hands a message to the
/// sockets it holds of [`RelayedSignal::to`]. Like the typing channel it is ephemeral: a
/// signal for a user with no socket anywhere is gone, and WebRTC clients renegotiate.
pub fn call_signals_channel(prefix: &str) -> String {
    format!("{prefix}fanout:call-signals")
}

/// One message of [`call_signals_channel`]: the recipient and the socket frame, ready to send.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayedSignal {
    pub to: String,
    pub frame: String,
}
