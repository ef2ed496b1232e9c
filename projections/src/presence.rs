//! The Redis read model: presence and room stats, as in the seed.
//!
//! Its keys and what each holds are the read-model contract: `read_model::presence`.
//!
//! Exactly once: every batch's writes, the rooms' progress and the partition checkpoints go in
//! one MULTI/EXEC transaction, so they are applied together or not at all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use read_model::presence as keys;
use redis::aio::ConnectionManager;
use schemas::DomainEvent;
use schemas::events::PresenceStatus;
use schemas::topics::Topic;

use crate::deadletter::DeadLetter;
use crate::error::ProjectionError;
use crate::gate::{Admission, Gate, RoomCursor};
use crate::runner::{Counts, Project};
use crate::source::{Batch, Positions};

const PRESENCE_TTL_SECS: i64 = 24 * 3600;
const STATS_TTL_SECS: i64 = 30 * 24 * 3600;
/// `room_stats.member_count = SCARD members`, and the stats' expiry (KEYS: stats, members).
const MEMBER_COUNT_SCRIPT: &str = "redis.call('HSET', KEYS[1], 'member_count', redis.call('SCARD', KEYS[2])) \
     redis.call('EXPIRE', KEYS[1], ARGV[1]) return 0";

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
        projector.ensure_whole().await?;
        Ok(projector)
    }

    /// Whether the generation carries its mark (see [`keys::whole`]).
    async fn is_whole(&self) -> Result<bool, ProjectionError> {
        let mut redis = self.redis.clone();
        Ok(redis::cmd("EXISTS")
            .arg(keys::whole(&self.prefix))
            .query_async(&mut redis)
            .await?)
    }

    /// Makes the generation one the checkpoints can be trusted in. Redis here keeps nothing
    /// across a restart: without [`keys::whole`] the checkpoints and room seqs that are left
    /// were written after the loss, and resuming from them would skip everything before it.
    /// So what is left goes and the log is read again from its start.
    pub async fn ensure_whole(&self) -> Result<(), ProjectionError> {
        if self.is_whole().await? {
            return Ok(());
        }
        let mut redis = self.redis.clone();
        let dropped = crate::live::redis_drop(&self.redis, &self.prefix).await?;
        if dropped > 0 {
            tracing::warn!(
                prefix = %self.prefix,
                keys = dropped,
                "the Redis model was lost (Redis restarted empty); dropped what was left, replaying the log from its start"
            );
        }
        let _: () = redis::cmd("SET")
            .arg(keys::whole(&self.prefix))
            .arg(1)
            .query_async(&mut redis)
            .await?;
        Ok(())
    }

    pub fn topics() -> Vec<Topic> {
        vec![Topic::RoomEvents, Topic::PresenceEvents]
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
            .arg(keys::room_seq(&self.prefix))
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
                .map(|u| keys::online(&self.prefix, u))
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
                .arg(keys::user_rooms(&self.prefix, &user))
                .query_async(&mut redis)
                .await?;
            rooms_of.insert(user, rooms);
        }
        Ok((online, rooms_of))
    }

    fn set_visibility(
        &self,
        tx: &mut redis::Pipeline,
        room: &str,
        visibility: schemas::events::Visibility,
    ) {
        tx.hset(
            keys::room_access(&self.prefix, room),
            "visibility",
            crate::enum_str(&visibility),
        )
        .ignore();
    }

    fn part(
        &self,
        tx: &mut redis::Pipeline,
        room: &str,
        user: &str,
        rooms_of: &mut HashMap<String, HashSet<String>>,
    ) {
        tx.srem(keys::members(&self.prefix, room), user).ignore();
        tx.srem(keys::user_rooms(&self.prefix, user), room).ignore();
        tx.srem(keys::presence(&self.prefix, room), user).ignore();
        if let Some(rooms) = rooms_of.get_mut(user) {
            rooms.remove(room);
        }
    }

    fn join(
        &self,
        tx: &mut redis::Pipeline,
        room: &str,
        user: &str,
        online: &HashMap<String, bool>,
        rooms_of: &mut HashMap<String, HashSet<String>>,
    ) {
        tx.sadd(keys::members(&self.prefix, room), user).ignore();
        tx.sadd(keys::user_rooms(&self.prefix, user), room).ignore();
        if online.get(user).copied().unwrap_or(false) {
            let key = keys::presence(&self.prefix, room);
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

    async fn checkpoints(&self) -> Result<Positions, ProjectionError> {
        let mut positions = Positions::new();
        for topic in Self::topics() {
            for (partition, next) in
                keys::checkpoint_of(&self.redis, &self.prefix, topic.name()).await?
            {
                positions.insert((topic, partition), next);
            }
        }
        Ok(positions)
    }

    async fn apply(
        &mut self,
        batch: &Batch,
        dead_letter: &DeadLetter,
    ) -> Result<Counts, ProjectionError> {
        // Every batch, not only the runner's once-a-second look: a burst arriving right after
        // Redis lost the model would otherwise be written onto the remainder.
        if !self.is_whole().await? {
            return Err(ProjectionError::StoreBehind(
                "Redis lost the model (it keeps nothing across a restart)".into(),
            ));
        }
        self.restore_cursors(batch).await?;
        let (mut online, mut rooms_of) = self.prefetch(batch).await?;
        let mut counts = Counts::default();
        let mut tx = redis::pipe();
        tx.atomic();
        let mut progress: BTreeMap<String, String> = BTreeMap::new();
        let mut touched_rooms: BTreeSet<String> = BTreeSet::new();
        for record in &batch.records {
            let envelope = record.event.envelope();
            match self.gate.sort(record, dead_letter, &mut counts).await? {
                Admission::Skip => continue,
                Admission::Other => {}
                Admission::Room(room, seq) => {
                    progress.insert(
                        room.to_string(),
                        keys::room_seq_value(seq, &envelope.event_id),
                    );
                    touched_rooms.insert(room.to_string());
                }
            }
            counts.applied += 1;
            let at = envelope.occurred_at;
            use DomainEvent as E;
            match &record.event {
                E::RoomCreated(e) => {
                    let room = envelope.room_id.as_deref().unwrap_or_default();
                    self.set_visibility(&mut tx, room, e.visibility);
                    self.join(&mut tx, room, &e.owner_id, &online, &mut rooms_of);
                    tx.hset(keys::room_stats(&self.prefix, room), "last_activity", at)
                        .ignore();
                    tx.hset(keys::room_stats(&self.prefix, room), "message_count", 0)
                        .ignore();
                }
                E::RoomUpdated(e) => {
                    let room = envelope.room_id.as_deref().unwrap_or_default();
                    self.set_visibility(&mut tx, room, e.visibility);
                }
                E::MemberJoined(e) => {
                    let room = envelope.room_id.as_deref().unwrap_or_default();
                    self.join(&mut tx, room, &e.member_id, &online, &mut rooms_of);
                }
                E::MemberBanned(e) => {
                    let room = envelope.room_id.as_deref().unwrap_or_default();
                    tx.sadd(keys::banned(&self.prefix, room), &e.member_id)
                        .ignore();
                    self.part(&mut tx, room, &e.member_id, &mut rooms_of);
                }
                E::MemberLeft(e) => {
                    let room = envelope.room_id.as_deref().unwrap_or_default();
                    self.part(&mut tx, room, &e.member_id, &mut rooms_of);
                }
                E::MessagePosted(_) => {
                    let room = envelope.room_id.as_deref().unwrap_or_default();
                    let stats = keys::room_stats(&self.prefix, room);
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
                        tx.set(keys::online(&self.prefix, user), status).ignore();
                    } else {
                        tx.del(keys::online(&self.prefix, user)).ignore();
                    }
                    online.insert(user.to_string(), is_online);
                    for room in rooms_of.get(user).into_iter().flatten() {
                        let key = keys::presence(&self.prefix, room);
                        if is_online {
                            tx.sadd(&key, user).ignore();
                        } else {
                            tx.srem(&key, user).ignore();
                        }
                        tx.expire(&key, PRESENCE_TTL_SECS).ignore();
                    }
                    let session = keys::session(&self.prefix, user);
                    tx.hset(&session, "last_seen", at).ignore();
                    tx.hset(&session, "status", status).ignore();
                }
                _ => {}
            }
        }
        if !progress.is_empty() {
            let pairs: Vec<(&String, &String)> = progress.iter().collect();
            tx.hset_multiple(keys::room_seq(&self.prefix), &pairs)
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
            tx.hset_multiple(keys::offsets(&self.prefix, topic.name()), &pairs)
                .ignore();
        }
        // The member count is the members set's size after this batch, counted inside the same
        // transaction: set apart from it, a crash between the two left the count stale for good
        // (the batch is not applied again once its checkpoint is stored; kill -9 test).
        for room in &touched_rooms {
            tx.cmd("EVAL")
                .arg(MEMBER_COUNT_SCRIPT)
                .arg(2)
                .arg(keys::room_stats(&self.prefix, room))
                .arg(keys::members(&self.prefix, room))
                .arg(STATS_TTL_SECS)
                .ignore();
        }
        let mut redis = self.redis.clone();
        let _: () = tx.query_async(&mut redis).await?;
        Ok(counts)
    }

    fn reset(&mut self) {
        self.gate.clear();
    }

    /// Also false when Redis lost the model under the projector (see [`Self::ensure_whole`]):
    /// reopening drops the remainder and replays.
    async fn is_live(&self) -> Result<bool, ProjectionError> {
        if !self.is_whole().await? {
            return Ok(false);
        }
        match &self.pointer {
            Some(base) => Ok(crate::live::redis_live(&self.redis, base).await? == self.prefix),
            None => Ok(true),
        }
    }
}
