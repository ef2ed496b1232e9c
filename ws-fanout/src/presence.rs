//! Presence: who is online, decided across every node through Redis, recorded on
//! `chat.presence-events` (the presence projector keeps the read model) and shown to co-members
//! as `{"type":"presence","user_id","status"}` frames.
//!
//! Each authenticated socket is a connection `node:socket` in the sorted set
//! `ws:conns:{user}`, scored by when it expires unless refreshed. The node refreshes its own
//! every `ttl / 3`; a node that dies stops refreshing, and its connections lapse after `ttl`.
//! The transitions are decided inside Redis scripts, so exactly one node sees each one:
//! the first live connection of a user means online, the last one gone (closed or lapsed)
//! means offline. `ws:presence:deadlines` indexes users by their latest expiry so any node's
//! sweep finds the lapsed ones without scanning.
//!
//! Known limit: two nodes emitting opposite transitions for one user within the same instant
//! (a disconnect on one, a reconnect on another) may land in either order on the topic, so the
//! read model can show the last of them rather than the truth until the user's next transition.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::aio::ConnectionManager;
use schemas::envelope::Envelope;
use schemas::events::{PresenceChanged, PresenceStatus};
use schemas::{DomainEvent, EventCodec};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::FanoutError;
use crate::heads::Heads;
use crate::hub::Hub;
use crate::line::Frame;
use crate::metrics::Metrics;

/// The Redis channel presence transitions travel on between nodes.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}fanout:presence")
}

/// Adds a connection; returns 1 when it is the user's first live one.
const CONNECT: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], 'GT', ARGV[2], ARGV[4])
if before == 0 then return 1 end
return 0
"#;

/// Removes a connection; returns 1 when no live one is left.
const DISCONNECT: &str = r#"
local removed = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if removed == 1 and redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 1
end
return 0
"#;

/// Claims up to 100 users whose connections all lapsed; each is returned to one caller only.
const SWEEP: &str = r#"
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
local gone = {}
for _, user in ipairs(users) do
  local conns = ARGV[2] .. user
  redis.call('ZREMRANGEBYSCORE', conns, '-inf', ARGV[1])
  local last = redis.call('ZRANGE', conns, -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('ZREM', KEYS[1], user)
    table.insert(gone, user)
  else
    redis.call('ZADD', KEYS[1], last[2], user)
  end
end
return gone
"#;

// Built once: a `Script` hashes its source, and connect/disconnect run on every socket.
static CONNECT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CONNECT));
static DISCONNECT_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(DISCONNECT));
static SWEEP_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SWEEP));

pub struct Presence {
    redis: ConnectionManager,
    /// `CHAT_REDIS_PREFIX`; the connection sets live under it, not under a projector generation.
    prefix: String,
    channel: String,
    node_id: String,
    ttl: Duration,
    producer: FutureProducer,
    codec: Arc<EventCodec>,
    hub: Arc<Hub>,
    heads: Heads,
    metrics: Metrics,
    /// This node's connections: `socket id -> user`.
    live: Mutex<HashMap<u64, String>>,
    /// Transitions wait here for the one task that writes them, in the order they were decided,
    /// so a socket's start never waits for the broker.
    transitions: mpsc::UnboundedSender<(String, PresenceStatus)>,
    pending: Mutex<Option<mpsc::UnboundedReceiver<(String, PresenceStatus)>>>,
}

fn now_ms() -> i64 {
    schemas::envelope::now_ms()
}

impl Presence {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        redis: ConnectionManager,
        prefix: &str,
        brokers: &str,
        ttl: Duration,
        codec: Arc<EventCodec>,
        hub: Arc<Hub>,
        heads: Heads,
        metrics: Metrics,
    ) -> Result<Self, FanoutError> {
        let producer: FutureProducer = schemas::kafka::producer_config(brokers)
            .create()
            .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))?;
        let (transitions, pending) = mpsc::unbounded_channel();
        Ok(Self {
            transitions,
            pending: Mutex::new(Some(pending)),
            redis,
            prefix: prefix.to_string(),
            channel: channel(prefix),
            node_id: uuid::Uuid::now_v7().simple().to_string(),
            ttl,
            producer,
            codec,
            hub,
            heads,
            metrics,
            live: Mutex::new(HashMap::new()),
        })
    }

    fn conns_key(&self, user: &str) -> String {
        format!("{}ws:conns:{user}", self.prefix)
    }

    fn deadlines_key(&self) -> String {
        format!("{}ws:presence:deadlines", self.prefix)
    }

    fn member(&self, socket: u64) -> String {
        format!("{}:{socket}", self.node_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, String>> {
        match self.live.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A socket of `user` authenticated on this node.
    pub async fn connected(&self, socket: u64, user: &str) {
        self.lock().insert(socket, user.to_string());
        let now = now_ms();
        let first: Result<i64, _> = CONNECT_SCRIPT
            .key(self.conns_key(user))
            .key(self.deadlines_key())
            .arg(now)
            .arg(now + self.ttl.as_millis() as i64)
            .arg(self.member(socket))
            .arg(user)
            .invoke_async(&mut self.redis.clone())
            .await;
        match first {
            Ok(1) => self.decided(user, PresenceStatus::Online),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, user, "presence: cannot record a connection"),
        }
    }

    /// Stops refreshing a connection without removing it: it lapses after `ttl`.
    pub fn forget(&self, socket: u64) {
        self.lock().remove(&socket);
    }

    /// A socket of `user` on this node ended.
    pub async fn disconnected(&self, socket: u64, user: &str) {
        self.lock().remove(&socket);
        let last: Result<i64, _> = DISCONNECT_SCRIPT
            .key(self.conns_key(user))
            .key(self.deadlines_key())
            .arg(now_ms())
            .arg(self.member(socket))
            .arg(user)
            .invoke_async(&mut self.redis.clone())
            .await;
        match last {
            Ok(1) => self.decided(user, PresenceStatus::Offline),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, user, "presence: cannot remove a connection"),
        }
    }

    fn decided(&self, user: &str, status: PresenceStatus) {
        // Fails only when the node is stopping.
        let _ = self.transitions.send((user.to_string(), status));
    }

    /// Records the transition on the topic (the read model follows), then tells every node:
    /// co-members are shown only what is recorded, as with room events. A broker that does not
    /// answer is waited for with the one retry policy: the transitions after it wait in order,
    /// none is dropped, and the connection refreshes do not wait for it (they run on their own
    /// loop, so nobody is swept offline meanwhile).
    async fn emit(&self, user: &str, status: PresenceStatus, stop: &CancellationToken) {
        let label = match status {
            PresenceStatus::Online => "online",
            PresenceStatus::Away => "away",
            PresenceStatus::Offline => "offline",
        };
        let event = DomainEvent::PresenceChanged(PresenceChanged {
            envelope: Envelope::for_user(user, Some(user.to_string())),
            status,
            node_id: self.node_id.clone(),
        });
        let payload =
            platform::retry::until_ok("presence_encode", stop, || self.codec.encode(&event)).await;
        let Some(payload) = payload else { return };
        let written = platform::retry::until_ok("presence_event", stop, || async {
            let record = FutureRecord::to(schemas::topics::PRESENCE_EVENTS)
                .key(user)
                .payload(&payload);
            self.producer
                .send(record, Duration::from_secs(10))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        })
        .await;
        if written.is_none() {
            tracing::warn!(
                user,
                status = label,
                "presence: stopping before the event was written"
            );
            return;
        }
        self.metrics.presence.with_label_values(&[label]).inc();
        let message = json!({"user_id": user, "status": label}).to_string();
        let published: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(message)
            .query_async(&mut self.redis.clone())
            .await;
        if let Err(e) = published {
            tracing::warn!(error = %e, "presence: cannot notify the other nodes");
        }
    }

    /// A transition from the channel: a `presence` frame to every socket here subscribed to a
    /// room the user is a member of (one per socket).
    pub async fn receive(&self, payload: &[u8]) {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        let (Some(user), Some(status)) = (message["user_id"].as_str(), message["status"].as_str())
        else {
            return;
        };
        let mut rooms = match self.heads.rooms_of(user).await {
            Ok(rooms) => rooms,
            Err(e) => {
                tracing::warn!(error = %e, "presence: cannot read the user's rooms");
                Vec::new()
            }
        };
        rooms.extend(self.hub.rooms_with_member(user));
        let frame =
            Frame::from(json!({"type": "presence", "user_id": user, "status": status}).to_string());
        let mut seen = HashSet::new();
        for room in rooms {
            self.hub.broadcast(&room, &frame, user, &mut seen);
        }
    }

    /// Refreshes this node's connections and sweeps lapsed users (Redis alone), and writes
    /// decided transitions on a task of their own (the broker may be slow or away), until
    /// `stop`.
    pub async fn keep(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut pending) = self.pending.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        let writer = {
            let presence = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        next = pending.recv() => match next {
                            Some((user, status)) => presence.emit(&user, status, &stop).await,
                            None => return,
                        },
                    }
                }
            })
        };
        let mut refresh = tokio::time::interval((self.ttl / 3).max(Duration::from_millis(200)));
        let mut sweep = tokio::time::interval((self.ttl / 6).max(Duration::from_millis(200)));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = refresh.tick() => self.refresh().await,
                _ = sweep.tick() => self.sweep().await,
            }
        }
        let _ = writer.await;
    }

    async fn refresh(&self) {
        let live: Vec<(u64, String)> = self.lock().iter().map(|(s, u)| (*s, u.clone())).collect();
        if live.is_empty() {
            return;
        }
        let deadline = now_ms() + self.ttl.as_millis() as i64;
        let mut pipe = redis::pipe();
        for (socket, user) in &live {
            pipe.zadd(self.conns_key(user), self.member(*socket), deadline)
                .ignore();
            pipe.cmd("ZADD")
                .arg(self.deadlines_key())
                .arg("GT")
                .arg(deadline)
                .arg(user)
                .ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut self.redis.clone()).await {
            tracing::warn!(error = %e, "presence: cannot refresh connections");
        }
    }

    async fn sweep(&self) {
        let gone: Result<Vec<String>, _> = SWEEP_SCRIPT
            .key(self.deadlines_key())
            .arg(now_ms())
            .arg(format!("{}ws:conns:", self.prefix))
            .invoke_async(&mut self.redis.clone())
            .await;
        match gone {
            Ok(users) => {
                for user in users {
                    self.decided(&user, PresenceStatus::Offline);
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence: sweep failed"),
        }
    }
}
