//! The Redis read model: presence, room stats and the membership sets, as the presence
//! projector writes them and the query and fan-out tiers read them.
//!
//! Every key lives under a generation prefix (`CHAT_REDIS_PREFIX` or its live generation, see
//! [`crate::live`]); the builders take that prefix so no tier spells a key format itself.
//! - `presence:{room_id}`: set of the room's members who are online.
//! - `session:{user_id}`: hash; the projector maintains `last_seen` and `status`.
//! - `room_stats:{room_id}`: hash `{member_count, message_count, last_activity}`.
//! - `members:{room_id}` / `user_rooms:{user_id}`: who is in a room, and a user's rooms.
//! - `online:{user_id}`: the user's current status while not offline.
//! - `room_access:{room_id}`: hash `{visibility}` (`public` / `private`), and `banned:{room_id}`:
//!   set of users banned from the room; with `members:` they say who may read a room, for the
//!   fan-out nodes that did not see the room's events themselves (see [`standing`]).
//! - `proj:redis:room_seq` and `proj:redis:offsets:{topic}`: the projector's progress, written in
//!   the same transaction as each batch, so read together they agree (see [`room_snapshot`]).
//! - `proj:redis:whole`: the model is not a remainder of one Redis lost (see [`whole`]).

use std::collections::HashMap;

use redis::aio::ConnectionManager;

pub fn presence(prefix: &str, room: &str) -> String {
    format!("{prefix}presence:{room}")
}

pub fn session(prefix: &str, user: &str) -> String {
    format!("{prefix}session:{user}")
}

pub fn room_stats(prefix: &str, room: &str) -> String {
    format!("{prefix}room_stats:{room}")
}

pub fn members(prefix: &str, room: &str) -> String {
    format!("{prefix}members:{room}")
}

pub fn user_rooms(prefix: &str, user: &str) -> String {
    format!("{prefix}user_rooms:{user}")
}

pub fn online(prefix: &str, user: &str) -> String {
    format!("{prefix}online:{user}")
}

pub fn room_access(prefix: &str, room: &str) -> String {
    format!("{prefix}room_access:{room}")
}

pub fn banned(prefix: &str, room: &str) -> String {
    format!("{prefix}banned:{room}")
}

/// Hash `partition -> next offset` of `topic` (its name) that the projector has applied.
pub fn offsets(prefix: &str, topic: &str) -> String {
    format!("{prefix}proj:redis:offsets:{topic}")
}

/// Hash `room_id -> "{seq}:{event_id}"` of the last event the projector applied per room.
pub fn room_seq(prefix: &str) -> String {
    format!("{prefix}proj:redis:room_seq")
}

/// Set when the projector opens a generation whose model is whole (empty, or complete up to
/// its checkpoints), never by a batch. Redis keeps nothing across a restart here, so a
/// generation without it has lost its model, or holds only what was written since: the
/// projector then drops what is left and replays the log from its start.
pub fn whole(prefix: &str) -> String {
    format!("{prefix}proj:redis:whole")
}

/// The families this model owns whole (without their prefix), for dropping a generation.
/// `session:*` is shared with the commands tier, so only [`SESSION_FIELDS`] are this model's.
pub const FAMILIES: &[&str] = &[
    "presence:",
    "room_stats:",
    "members:",
    "user_rooms:",
    "online:",
    "room_access:",
    "banned:",
    "proj:redis:",
];

pub const SESSION_PREFIX: &str = "session:";
pub const SESSION_FIELDS: &[&str] = &["status", "last_seen"];

/// A `room_seq` value.
pub fn room_seq_value(seq: i64, event_id: &str) -> String {
    format!("{seq}:{event_id}")
}

/// The `seq` of a `room_seq` value.
pub fn seq_of(value: &str) -> Option<i64> {
    value.split_once(':').and_then(|(s, _)| s.parse().ok())
}

/// The projector's checkpoint (next offset) per partition of `topic` in generation `prefix`.
pub async fn checkpoint_of(
    redis: &ConnectionManager,
    prefix: &str,
    topic: &str,
) -> redis::RedisResult<HashMap<i32, i64>> {
    let mut redis = redis.clone();
    let all: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(offsets(prefix, topic))
        .query_async(&mut redis)
        .await?;
    Ok(all
        .into_iter()
        .filter_map(|(p, next)| Some((p.parse().ok()?, next)))
        .collect())
}

/// `(checkpoint of the room's partition of `topic`, the room's applied seq)`, read atomically;
/// zeros for what the projector has not written. Every event of the room up to that seq lies
/// before that checkpoint.
pub async fn room_snapshot(
    redis: &ConnectionManager,
    prefix: &str,
    topic: &str,
    room_id: &str,
    partition: i32,
) -> redis::RedisResult<(i64, i64)> {
    let mut redis = redis.clone();
    let (checkpoint, seq): (Option<i64>, Option<String>) = redis::pipe()
        .atomic()
        .hget(offsets(prefix, topic), partition)
        .hget(room_seq(prefix), room_id)
        .query_async(&mut redis)
        .await?;
    Ok((
        checkpoint.unwrap_or(0),
        seq.as_deref().and_then(seq_of).unwrap_or(0),
    ))
}

/// What the model says of a user in a room, read in one round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    pub member: bool,
    pub banned: bool,
    /// `None` when the model has no such room (yet).
    pub public: Option<bool>,
}

pub async fn standing(
    redis: &ConnectionManager,
    prefix: &str,
    room_id: &str,
    user_id: &str,
) -> redis::RedisResult<Standing> {
    let mut redis = redis.clone();
    let (member, banned, visibility): (bool, bool, Option<String>) = redis::pipe()
        .sismember(members(prefix, room_id), user_id)
        .sismember(banned(prefix, room_id), user_id)
        .hget(room_access(prefix, room_id), "visibility")
        .query_async(&mut redis)
        .await?;
    Ok(Standing {
        member,
        banned,
        public: visibility.map(|v| v == "public"),
    })
}

/// Whether the projector lists `user_id` among the room's members.
pub async fn is_member(
    redis: &ConnectionManager,
    prefix: &str,
    room_id: &str,
    user_id: &str,
) -> redis::RedisResult<bool> {
    let mut redis = redis.clone();
    redis::cmd("SISMEMBER")
        .arg(members(prefix, room_id))
        .arg(user_id)
        .query_async(&mut redis)
        .await
}

/// The rooms the projector lists for `user_id`.
pub async fn rooms_of(
    redis: &ConnectionManager,
    prefix: &str,
    user_id: &str,
) -> redis::RedisResult<Vec<String>> {
    members_of_set(redis, user_rooms(prefix, user_id)).await
}

/// The room's members who are online.
pub async fn online_members(
    redis: &ConnectionManager,
    prefix: &str,
    room_id: &str,
) -> redis::RedisResult<Vec<String>> {
    members_of_set(redis, presence(prefix, room_id)).await
}

async fn members_of_set(redis: &ConnectionManager, key: String) -> redis::RedisResult<Vec<String>> {
    let mut redis = redis.clone();
    redis::cmd("SMEMBERS")
        .arg(key)
        .query_async(&mut redis)
        .await
}
