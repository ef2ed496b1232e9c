//! The Redis read model: presence and room stats, as in the seed.
//!
//! Keys (all under `CHAT_REDIS_PREFIX`):
//! - `presence:{room_id}`: set of the room's members who are online (expires a day after its
//!   last change, so a room nobody touches does not keep stale presence forever).
//! - `session:{user_id}`: hash; this projector maintains `last_seen` and `status` (the commands
//!   tier owns the session fields).
//! - `room_stats:{room_id}`: hash `{member_count, message_count, last_activity}`, expiring 30
//!   days after the room's last activity.
//! - `members:{room_id}` / `user_rooms:{user_id}`: sets this projector needs to keep
//!   `presence:*` right when people join, leave or come online.
//! - `online:{user_id}`: the user's current status while not offline.
//! - `proj:redis:room_seq` and `proj:redis:offsets:{topic}`: its progress.
//!
//! Exactly once: every batch's writes, the rooms' progress and the partition checkpoints go in
//! one MULTI/EXEC transaction, so they are applied together or not at all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use redis::aio::ConnectionManager;
use schemas::DomainEvent;
use schemas::events::PresenceStatus;
use schemas::topics::Topic;

use crate::deadletter::DeadLetter;
use crate::error::ProjectionError;
use crate::gate::{Gate, RoomCursor};
use crate::runner::{Counts, Project};
use crate::source::{Batch, Positions};

const PRESENCE_TTL_SECS: i64 = 24 * 3600;
const STATS_TTL_SECS: i64 = 30 * 24 * 3600;

pub struct PresenceProjector {
    redis: ConnectionManager,
    prefix: String,
    gate: Gate,
    /// The base prefix whose live pointer this projector follows (`crate::live`).
    pointer: Option<String>,
}

impl PresenceProjector {
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            gate: Gate::default(),
            pointer: None,
        }
    }

    /// Opens the live generation under `base` and follows its pointer.
    pub async fn open_live(redis: ConnectionManager, base: &str) -> Result<Self, ProjectionError> {
        let live = crate::live::redis_live(&redis, base).await?;
        let mut projector = Self::new(redis, live);
        projector.pointer = Some(base.to_string());
        Ok(projector)
    }

    pub fn topics() -> Vec<Topic> {
        vec![Topic::RoomEvents, Topic::PresenceEvents]
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub async fn checkpoints(&self) -> Result<Positions, ProjectionError> {
        let mut positions = Positions::new();
        for topic in Self::topics() {
            for (partition, next) in checkpoint_of(&self.redis, &self.prefix, topic).await? {
                positions.insert((topic, partition), next);
            }
        }
        Ok(positions)
    }

    async fn restore_cursors(&mut self, batch: &Batch) -> Result<(), ProjectionError> {
        let unknown: Vec<String> = batch
            .records
            .iter()
            .filter(|r| r.topic == Topic::RoomEvents)
            .filter_map(|r| r.event.envelope().room_id.clone())
            .filter(|room| !self.gate.knows(room))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let mut redis = self.redis.clone();
        let stored: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(room_seq_key(&self.prefix))
            .arg(&unknown)
            .query_async(&mut redis)
            .await?;
        for (room, value) in unknown.iter().zip(stored) {
            let cursor = value
                .and_then(|v| {
                    let (seq, id) = v.split_once(':')?;
                    Some(RoomCursor::restored(
                        seq.parse().ok()?,
                        Some(id.to_string()),
                    ))
                })
                .unwrap_or_default();
            self.gate.restore(room, cursor);
        }
        Ok(())
    }

    /// Reads what the batch needs to know before writing: who is online, and the rooms of the
    /// users whose presence changes.
    async fn prefetch(
        &self,
        batch: &Batch,
    ) -> Result<(HashMap<String, bool>, HashMap<String, HashSet<String>>), ProjectionError> {
        let mut users: BTreeSet<String> = BTreeSet::new();
        let mut presence_users: BTreeSet<String> = BTreeSet::new();
        for record in &batch.records {
            match &record.event {
                DomainEvent::MemberJoined(e) => {
                    users.insert(e.member_id.clone());
                }
                DomainEvent::RoomCreated(e) => {
                    users.insert(e.owner_id.clone());
                }
                DomainEvent::PresenceChanged(e) => {
                    if let Some(u) = &e.envelope.user_id {
                        presence_users.insert(u.clone());
                    }
                }
                _ => {}
            }
        }
        let mut redis = self.redis.clone();
        let mut online = HashMap::new();
        if !users.is_empty() {
            let keys: Vec<String> = users
                .iter()
                .map(|u| self.key(&format!("online:{u}")))
                .collect();
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut redis)
                .await?;
            for (user, value) in users.into_iter().zip(values) {
                online.insert(user, value.is_some());
            }
        }
        let mut rooms_of = HashMap::new();
        for user in presence_users {
            let rooms: HashSet<String> = redis::cmd("SMEMBERS")
                .arg(self.key(&format!("user_rooms:{user}")))
                .query_async(&mut redis)
                .await?;
            rooms_of.insert(user, rooms);
        }
        Ok((online, rooms_of))
    }

    async fn apply_batch(
        &mut self,
        batch: &Batch,
        dead_letter: &DeadLetter,
    ) -> Result<Counts, ProjectionError> {
        self.restore_cursors(batch).await?;
        let (mut online, mut rooms_of) = self.prefetch(batch).await?;
        let mut counts = Counts::default();
        let mut tx = redis::pipe();
        tx.atomic();
        let mut progress: BTreeMap<String, String> = BTreeMap::new();
        let mut touched_rooms: BTreeSet<String> = BTreeSet::new();
        for record in &batch.records {
            let envelope = record.event.envelope();
            if record.topic == Topic::RoomEvents {
                let (Some(room), Some(seq)) = (envelope.room_id.as_deref(), envelope.seq) else {
                    continue;
                };
                if !self
                    .gate
                    .admit(record, room, seq, dead_letter, &mut counts)
                    .await?
                {
                    continue;
                }
                progress.insert(room.to_string(), format!("{seq}:{}", envelope.event_id));
                touched_rooms.insert(room.to_string());
            }
            counts.applied += 1;
            let at = envelope.occurred_at;
            use DomainEvent as E;
            match &record.event {
                E::RoomCreated(e) => {
                    let room = envelope.room_id.as_deref().unwrap_or_default();
                    self.join(&mut tx, room, &e.owner_id, &online, &mut rooms_of);
                    tx.hset(self.key(&format!("room_stats:{room}")), "last_activity", at)
                        .ignore();
                    tx.hset(self.key(&format!("room_stats:{room}")), "message_count", 0)
                        .ignore();
                }
                E::MemberJoined(e) => {
                    let room = envelope.room_id.as_deref().unwrap_or_default();
                    self.join(&mut tx, room, &e.member_id, &online, &mut rooms_of);
                }
                E::MemberLeft(schemas::events::MemberLeft { member_id, .. })
                | E::MemberBanned(schemas::events::MemberBanned { member_id, .. }) => {
                    let room = envelope.room_id.as_deref().unwrap_or_default();
                    tx.srem(self.key(&format!("members:{room}")), member_id)
                        .ignore();
                    tx.srem(self.key(&format!("user_rooms:{member_id}")), room)
                        .ignore();
                    tx.srem(self.key(&format!("presence:{room}")), member_id)
                        .ignore();
                    if let Some(rooms) = rooms_of.get_mut(member_id) {
                        rooms.remove(room);
                    }
                }
                E::MessagePosted(_) => {
                    let room = envelope.room_id.as_deref().unwrap_or_default();
                    let stats = self.key(&format!("room_stats:{room}"));
                    tx.hset(&stats, "last_activity", at).ignore();
                    tx.hincr(&stats, "message_count", 1).ignore();
                    tx.expire(&stats, STATS_TTL_SECS).ignore();
                }
                E::PresenceChanged(e) => {
                    let Some(user) = envelope.user_id.as_deref() else {
                        continue;
                    };
                    let is_online = e.status != PresenceStatus::Offline;
                    let status = match e.status {
                        PresenceStatus::Online => "online",
                        PresenceStatus::Away => "away",
                        PresenceStatus::Offline => "offline",
                    };
                    if is_online {
                        tx.set(self.key(&format!("online:{user}")), status).ignore();
                    } else {
                        tx.del(self.key(&format!("online:{user}"))).ignore();
                    }
                    online.insert(user.to_string(), is_online);
                    for room in rooms_of.get(user).into_iter().flatten() {
                        let key = self.key(&format!("presence:{room}"));
                        if is_online {
                            tx.sadd(&key, user).ignore();
                        } else {
                            tx.srem(&key, user).ignore();
                        }
                        tx.expire(&key, PRESENCE_TTL_SECS).ignore();
                    }
                    let session = self.key(&format!("session:{user}"));
                    tx.hset(&session, "last_seen", at).ignore();
                    tx.hset(&session, "status", status).ignore();
                }
                _ => {}
            }
        }
        if !progress.is_empty() {
            let pairs: Vec<(&String, &String)> = progress.iter().collect();
            tx.hset_multiple(room_seq_key(&self.prefix), &pairs)
                .ignore();
        }
        let mut by_topic: BTreeMap<Topic, Vec<(String, i64)>> = BTreeMap::new();
        for ((topic, partition), next) in &batch.positions {
            by_topic
                .entry(*topic)
                .or_default()
                .push((partition.to_string(), *next));
        }
        for (topic, pairs) in by_topic {
            tx.hset_multiple(offsets_key(&self.prefix, topic), &pairs)
                .ignore();
        }
        let mut redis = self.redis.clone();
        let _: () = tx.query_async(&mut redis).await?;

        // Derived, so it can follow the transaction: the member count is the members set's size.
        if !touched_rooms.is_empty() {
            let mut pipe = redis::pipe();
            for room in &touched_rooms {
                pipe.scard(self.key(&format!("members:{room}")));
            }
            let sizes: Vec<i64> = pipe.query_async(&mut redis).await?;
            let mut pipe = redis::pipe();
            for (room, size) in touched_rooms.iter().zip(sizes) {
                let stats = self.key(&format!("room_stats:{room}"));
                pipe.hset(&stats, "member_count", size).ignore();
                pipe.expire(&stats, STATS_TTL_SECS).ignore();
            }
            let _: () = pipe.query_async(&mut redis).await?;
        }
        Ok(counts)
    }

    fn join(
        &self,
        tx: &mut redis::Pipeline,
        room: &str,
        user: &str,
        online: &HashMap<String, bool>,
        rooms_of: &mut HashMap<String, HashSet<String>>,
    ) {
        tx.sadd(self.key(&format!("members:{room}")), user).ignore();
        tx.sadd(self.key(&format!("user_rooms:{user}")), room)
            .ignore();
        if online.get(user).copied().unwrap_or(false) {
            let key = self.key(&format!("presence:{room}"));
            tx.sadd(&key, user).ignore();
            tx.expire(&key, PRESENCE_TTL_SECS).ignore();
        }
        if let Some(rooms) = rooms_of.get_mut(user) {
            rooms.insert(room.to_string());
        }
    }
}

impl Project for PresenceProjector {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn apply(
        &mut self,
        batch: &Batch,
        dead_letter: &DeadLetter,
    ) -> Result<Counts, ProjectionError> {
        self.apply_batch(batch, dead_letter).await
    }

    fn reset(&mut self) {
        self.gate.clear();
    }

    async fn is_live(&self) -> Result<bool, ProjectionError> {
        match &self.pointer {
            Some(base) => Ok(crate::live::redis_live(&self.redis, base).await? == self.prefix),
            None => Ok(true),
        }
    }
}

// What other tiers read of this model (ws-fanout places rooms with it): the checkpoints and each
// room's applied seq are written in one transaction per batch, so read together they agree.

fn offsets_key(prefix: &str, topic: Topic) -> String {
    format!("{prefix}proj:redis:offsets:{}", topic.name())
}

fn room_seq_key(prefix: &str) -> String {
    format!("{prefix}proj:redis:room_seq")
}

/// The projector's checkpoint (next offset) per partition of `topic` in generation `prefix`.
pub async fn checkpoint_of(
    redis: &ConnectionManager,
    prefix: &str,
    topic: Topic,
) -> Result<HashMap<i32, i64>, ProjectionError> {
    let mut redis = redis.clone();
    let all: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(offsets_key(prefix, topic))
        .query_async(&mut redis)
        .await?;
    Ok(all
        .into_iter()
        .filter_map(|(p, next)| Some((p.parse().ok()?, next)))
        .collect())
}

/// `(checkpoint of the room's partition, the room's applied seq)`, read atomically; zeros for
/// what the projector has not written. Every event of the room up to that seq lies before
/// that checkpoint.
pub async fn room_snapshot(
    redis: &ConnectionManager,
    prefix: &str,
    room_id: &str,
    partition: i32,
) -> Result<(i64, i64), ProjectionError> {
    let mut redis = redis.clone();
    let (checkpoint, seq): (Option<i64>, Option<String>) = redis::pipe()
        .atomic()
        .hget(offsets_key(prefix, Topic::RoomEvents), partition)
        .hget(room_seq_key(prefix), room_id)
        .query_async(&mut redis)
        .await?;
    let seq = seq
        .and_then(|v| v.split_once(':').and_then(|(s, _)| s.parse().ok()))
        .unwrap_or(0);
    Ok((checkpoint.unwrap_or(0), seq))
}
