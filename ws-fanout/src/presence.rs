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
/// A claimed user stays in the index with the claim's end (`ARGV[3]`) as its score until its
/// "offline" is on the log ([`RELEASE`]): a node that dies holding claims (the broker away, its
/// queue long) lets them lapse, and another node's sweep takes them again. At worst the log
/// gets one "offline" twice; it never misses one.
const SWEEP: &str = r#"
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
local gone = {}
for _, user in ipairs(users) do
  local conns = ARGV[2] .. user
  redis.call('ZREMRANGEBYSCORE', conns, '-inf', ARGV[1])
  local last = redis.call('ZRANGE', conns, -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('ZADD', KEYS[1], ARGV[3], user)
    table.insert(gone, user)
  else
    redis.call('ZADD', KEYS[1], last[2], user)
  end
end
return gone
"#;

/// Ends a sweep's claim once its "offline" is written: the user leaves the index, or, having
/// connected again meanwhile, gets its connections' expiry back (the connect could not lower
/// the claim's later score). A claim that lapsed and was taken again is not this one's to end.
const RELEASE: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if #last == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], last[2], ARGV[1])
end
return 1
"#;

/// How long a sweep's claim on a lapsed user holds before another node may take it again.
const CLAIM: Duration = Duration::from_secs(30);

/// How long a stopping node keeps writing the transitions it already decided (the broker
/// answering), so a restart does not drop a sweep's "offline".
const DRAIN: Duration = Duration::from_secs(5);

// Built once: a `Script` hashes its source, and connect/disconnect run on every socket.
static CONNECT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CONNECT));
static DISCONNECT_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(DISCONNECT));
static SWEEP_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SWEEP));
static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE));

/// A decided transition waiting for its append; `claim` is the end of the sweep's claim on
/// the user when the sweep decided it.
struct Transition {
    user: String,
    status: PresenceStatus,
    claim: Option<i64>,
}

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
    transitions: mpsc::UnboundedSender<Transition>,
    pending: Mutex<Option<mpsc::UnboundedReceiver<Transition>>>,
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
            Ok(1) => self.decided(user, PresenceStatus::Online, None),
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
            Ok(1) => self.decided(user, PresenceStatus::Offline, None),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, user, "presence: cannot remove a connection"),
        }
    }

    fn decided(&self, user: &str, status: PresenceStatus, claim: Option<i64>) {
        // Fails only when the node is stopping.
        let _ = self.transitions.send(Transition {
            user: user.to_string(),
            status,
            claim,
        });
    }

    /// Records the transition on the topic (the read model follows), then tells every node:
    /// co-members are shown only what is recorded, as with room events. A broker that does not
    /// answer is waited for with the one retry policy: the transitions after it wait in order,
    /// none is dropped, and the connection refreshes do not wait for it (they run on their own
    /// loop, so nobody is swept offline meanwhile).
    async fn emit(&self, transition: Transition, stop: &CancellationToken) {
        let Transition {
            user,
            status,
            claim,
        } = transition;
        let user = user.as_str();
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
        if let Some(claim) = claim {
            self.release(user, claim).await;
        }
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
        // The writer stops DRAIN after `stop`, so what was decided before it is still written.
        let drain = CancellationToken::new();
        {
            let (stop, drain) = (stop.clone(), drain.clone());
            tokio::spawn(async move {
                stop.cancelled().await;
                tokio::time::sleep(DRAIN).await;
                drain.cancel();
            });
        }
        let writer = {
            let presence = self.clone();
            let stop = stop.clone();
            let drain = drain.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        next = pending.recv() => match next {
                            Some(transition) => presence.emit(transition, &drain).await,
                            None => return,
                        },
                    }
                }
                presence.drain(&mut pending, &drain).await;
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

    /// Writes what is queued when the node stops, until `drain` ends it; what is left then is
    /// counted in the log (a sweep's claims lapse and another node takes them again).
    async fn drain(
        &self,
        pending: &mut mpsc::UnboundedReceiver<Transition>,
        drain: &CancellationToken,
    ) {
        while let Ok(transition) = pending.try_recv() {
            if drain.is_cancelled() {
                let left = 1 + std::iter::from_fn(|| pending.try_recv().ok()).count();
                tracing::warn!(left, "presence: stopped with transitions not written");
                return;
            }
            self.emit(transition, drain).await;
        }
    }

    async fn release(&self, user: &str, claim: i64) {
        let released: Result<i64, _> = RELEASE_SCRIPT
            .key(self.deadlines_key())
            .key(self.conns_key(user))
            .arg(user)
            .arg(claim)
            .arg(now_ms())
            .invoke_async(&mut self.redis.clone())
            .await;
        if let Err(e) = released {
            // The claim lapses instead, and the user is swept (and written offline) again.
            tracing::warn!(error = %e, user, "presence: cannot end a sweep's claim");
        }
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
        let now = now_ms();
        let claim = now + CLAIM.as_millis() as i64;
        let gone: Result<Vec<String>, _> = SWEEP_SCRIPT
            .key(self.deadlines_key())
            .arg(now)
            .arg(format!("{}ws:conns:", self.prefix))
            .arg(claim)
            .invoke_async(&mut self.redis.clone())
            .await;
        match gone {
            Ok(users) => {
                for user in users {
                    self.decided(&user, PresenceStatus::Offline, Some(claim));
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence: sweep failed"),
        }
    }
}
