//! Typing indicators: ephemeral, relayed between nodes on Redis pub/sub and never written to a
//! durable topic (a lost one costs nothing: the next keystroke sends another).
//!
//! A client sends `typing` every few seconds while its user types. The node relays at most one
//! per room and socket per [`MIN_INTERVAL`]; the rest are absorbed without an error, so a chatty
//! client is not punished. Every node shows a relayed one to the room's other subscribers as
//! `{"type":"typing","room_id","user_id","active":true,"expires_in_ms"}`, and when none followed
//! within [`EXPIRES`] it tells the same subscribers `"active":false`: clients need no timers of
//! their own, and a crashed typist does not type forever.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::error::FanoutError;
use crate::hub::Hub;
use crate::line::Frame;
use crate::metrics::Metrics;

/// At most one relayed indicator per room and socket in this interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);
/// How long an indicator shows without a new one.
pub const EXPIRES: Duration = Duration::from_secs(6);

/// The Redis channel a room's typing indicators travel on between nodes: one per room, like
/// the room's events, so a node receives only its rooms' indicators (`crate::interest`).
pub fn channel(prefix: &str, room_id: &str) -> String {
    format!("{prefix}fanout:typing:{room_id}")
}

pub struct Typing {
    redis: ConnectionManager,
    prefix: String,
    hub: Arc<Hub>,
    metrics: Metrics,
    /// `(room, user)` shown as typing on this node, and when that ends.
    active: Mutex<HashMap<(String, String), Instant>>,
}

impl Typing {
    pub fn new(redis: ConnectionManager, prefix: &str, hub: Arc<Hub>, metrics: Metrics) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
            hub,
            metrics,
            active: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `user_id`'s indicator for `room_id` to every node following the room (this one
    /// included).
    pub async fn publish(&self, room_id: &str, user_id: &str) -> Result<(), FanoutError> {
        let message = json!({"room_id": room_id, "user_id": user_id}).to_string();
        let mut redis = self.redis.clone();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel(&self.prefix, room_id))
            .arg(message)
            .query_async(&mut redis)
            .await
            .map_err(|e| FanoutError::Unavailable(format!("redis: {e}")))?;
        self.metrics.typing.with_label_values(&["relayed"]).inc();
        Ok(())
    }

    /// One indicator from the channel: shown to the room's other subscribers here.
    pub fn receive(&self, payload: &[u8]) {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        let (Some(room), Some(user)) = (message["room_id"].as_str(), message["user_id"].as_str())
        else {
            return;
        };
        self.lock().insert(
            (room.to_string(), user.to_string()),
            Instant::now() + EXPIRES,
        );
        self.show(room, user, true);
    }

    fn show(&self, room: &str, user: &str, active: bool) {
        let mut frame =
            json!({"type": "typing", "room_id": room, "user_id": user, "active": active});
        if active {
            frame["expires_in_ms"] = json!(EXPIRES.as_millis() as u64);
        }
        let frame = Frame::from(frame.to_string());
        self.hub.broadcast(room, &frame, user, &mut HashSet::new());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        match self.active.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Ends the indicators nobody refreshed, until `stop`.
    pub async fn expire(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            let now = Instant::now();
            let ended: Vec<(String, String)> = {
                let mut active = self.lock();
                let ended = active
                    .iter()
                    .filter(|(_, until)| **until <= now)
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>();
                for key in &ended {
                    active.remove(key);
                }
                ended
            };
            for (room, user) in ended {
                self.show(&room, &user, false);
            }
        }
    }
}

/// Per socket: when it last had an indicator relayed, per room.
#[derive(Default)]
pub struct Throttle {
    last: HashMap<String, Instant>,
}

impl Throttle {
    /// True when an indicator for `room` may be relayed now (and records it).
    pub fn allow(&mut self, room: &str) -> bool {
        let now = Instant::now();
        match self.last.get(room) {
            Some(at) if now.duration_since(*at) < MIN_INTERVAL => false,
            _ => {
                self.last.insert(room.to_string(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_indicator_per_room_per_interval() {
        let mut t = Throttle::default();
        assert!(t.allow("a"));
        assert!(!t.allow("a"));
        assert!(t.allow("b"));
        t.last.insert("a".into(), Instant::now() - MIN_INTERVAL);
        assert!(t.allow("a"));
    }
}
