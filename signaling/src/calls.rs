//! Who is in which call, as signaling needs it to relay: kept in Redis, so any signaling
//! instance answers for any call and a restarted one knows every call still going on.
//!
//! The state is a projection of the call events on `chat.room-events` (`crate::follow`), and of
//! the same events from the fast channel, which brings them a moment after the writer's
//! acknowledgement instead of after the log's delivery (a client that joined and signals at
//! once is then known). Applying is idempotent and order-free per member (the newest seq wins),
//! so a record read twice, late, or once from each source changes nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redis::aio::ConnectionManager;
use schemas::DomainEvent;
use schemas::events::CallTopology;

use crate::error::SignalingError;

/// How long a request waits for the call state to show a join the writer just acknowledged
/// (the log and the fast channel bring it a moment later).
pub const JOIN_PATIENCE: Duration = Duration::from_secs(3);

/// How long a call's state outlives its last event: longer than any call lasts, so an ended
/// call's seq still guards against a late re-read reviving it.
const STATE_TTL_SECS: u64 = 7 * 24 * 3600;

/// Applies one call event. KEYS: the call's hash, its members' hash (member -> `seq:1` in the
/// call, `seq:0` out of it). ARGV: seq, op, member, room, ttl, topology (of a start). Returns 1 when the member's state
/// changed. Events come from the log and, earlier, from the fast channel, so they may arrive
/// twice and out of order: each member's state is the one of their newest event (a later seq
/// wins), and nothing changes a call once it ended.
const APPLY: &str = r#"
local seq = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'room_id', ARGV[4])
if ARGV[2] == 'started' then redis.call('HSET', KEYS[1], 'topology', ARGV[6]) end
local changed = 0
if ARGV[2] == 'ended' then
  redis.call('HSET', KEYS[1], 'status', 'ended')
  redis.call('DEL', KEYS[2])
elseif redis.call('HGET', KEYS[1], 'status') ~= 'ended' then
  redis.call('HSETNX', KEYS[1], 'status', 'on')
  local current = redis.call('HGET', KEYS[2], ARGV[3])
  local last = current and tonumber(string.match(current, '^(%d+)')) or 0
  if seq > last then
    local flag = '1'
    if ARGV[2] == 'left' then flag = '0' end
    redis.call('HSET', KEYS[2], ARGV[3], seq .. ':' .. flag)
    changed = 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
return changed
"#;

#[derive(Clone)]
pub struct Calls {
    redis: ConnectionManager,
    prefix: String,
}

/// A call as the relay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallView {
    pub room_id: String,
    pub ended: bool,
    pub participants: HashSet<String>,
    /// Media flows through the SFU (`CallTopology::Sfu`); known once the start was applied.
    pub sfu: bool,
}

impl Calls {
    pub fn new(redis: ConnectionManager, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
        }
    }

    /// Both keys of a call share a hash tag, so the script's keys sit in one slot of a cluster.
    fn keys(&self, call_id: &str) -> (String, String) {
        let base = format!("{}call:{{{call_id}}}", self.prefix);
        (base.clone(), format!("{base}:in"))
    }

    /// Applies `event` if it is a call event (true), and skips anything else (false).
    pub async fn apply(&self, event: &DomainEvent) -> Result<bool, SignalingError> {
        let envelope = event.envelope();
        let mut topology = "";
        let (op, call_id, member) = match event {
            DomainEvent::CallStarted(e) => {
                topology = match e.topology {
                    CallTopology::P2p => "p2p",
                    CallTopology::Sfu => "sfu",
                };
                ("started", &e.call_id, e.initiator_id.as_str())
            }
            DomainEvent::CallJoined(e) => ("joined", &e.call_id, e.member_id.as_str()),
            DomainEvent::CallLeft(e) => ("left", &e.call_id, e.member_id.as_str()),
            DomainEvent::CallEnded(e) => ("ended", &e.call_id, ""),
            _ => return Ok(false),
        };
        let (Some(room), Some(seq)) = (envelope.room_id.as_deref(), envelope.seq) else {
            return Ok(false);
        };
        let (call, members) = self.keys(call_id);
        let mut redis = self.redis.clone();
        let changed: i64 = redis::Script::new(APPLY)
            .key(call)
            .key(members)
            .arg(seq)
            .arg(op)
            .arg(member)
            .arg(room)
            .arg(STATE_TTL_SECS)
            .arg(topology)
            .invoke_async(&mut redis)
            .await?;
        // The user's index follows the member's newest state (a hint: an entry can outlive its
        // call, so readers check the call itself).
        if changed == 1 && !member.is_empty() {
            let mut index = redis::cmd(if op == "left" { "SREM" } else { "SADD" });
            index.arg(self.user_key(member)).arg(call_id.as_str());
            index.query_async::<i64>(&mut redis).await?;
        }
        Ok(true)
    }

    /// The calls `user` may be in (an index kept beside the calls: an entry can outlive its
    /// call after a crash, so callers check the call itself and [`Self::forget`] stale ones).
    pub async fn of_user(&self, user: &str) -> Result<Vec<String>, SignalingError> {
        let mut redis = self.redis.clone();
        Ok(redis::cmd("SMEMBERS")
            .arg(self.user_key(user))
            .query_async(&mut redis)
            .await?)
    }

    pub async fn forget(&self, user: &str, call_id: &str) -> Result<(), SignalingError> {
        let mut redis = self.redis.clone();
        redis::cmd("SREM")
            .arg(self.user_key(user))
            .arg(call_id)
            .query_async::<i64>(&mut redis)
            .await?;
        Ok(())
    }

    /// Records `user`'s latest presence transition (`offline`, at Unix ms). The two topics are
    /// read independently, so an offline may be read before the join it followed; a join
    /// applied later finds it here (`Self::offline_since`).
    pub async fn note_presence(
        &self,
        user: &str,
        offline: bool,
        at: i64,
    ) -> Result<(), SignalingError> {
        let mut redis = self.redis.clone();
        redis::cmd("SET")
            .arg(format!("{}presence-seen:{user}", self.prefix))
            .arg(format!("{at}:{}", u8::from(offline)))
            .arg("EX")
            .arg(24 * 3600)
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }

    /// When `user` went offline, if their latest transition is an offline.
    pub async fn offline_since(&self, user: &str) -> Result<Option<i64>, SignalingError> {
        let mut redis = self.redis.clone();
        let seen: Option<String> = redis::cmd("GET")
            .arg(format!("{}presence-seen:{user}", self.prefix))
            .query_async(&mut redis)
            .await?;
        Ok(seen.and_then(|s| {
            let (at, offline) = s.split_once(':')?;
            (offline == "1").then(|| at.parse().ok()).flatten()
        }))
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}user-calls:{user}", self.prefix)
    }

    pub async fn get(&self, call_id: &str) -> Result<Option<CallView>, SignalingError> {
        let (call, members) = self.keys(call_id);
        let mut redis = self.redis.clone();
        let (fields, members): (Vec<Option<String>>, HashMap<String, String>) = redis::pipe()
            .cmd("HMGET")
            .arg(&call)
            .arg("room_id")
            .arg("status")
            .arg("topology")
            .cmd("HGETALL")
            .arg(&members)
            .query_async(&mut redis)
            .await?;
        let participants = members
            .into_iter()
            .filter(|(_, state)| state.ends_with(":1"))
            .map(|(member, _)| member)
            .collect();
        let field = |i: usize| fields.get(i).cloned().flatten();
        let Some(room_id) = field(0) else {
            return Ok(None);
        };
        Ok(Some(CallView {
            room_id,
            ended: field(1).as_deref() == Some("ended"),
            participants,
            sfu: field(2).as_deref() == Some("sfu"),
        }))
    }

    /// The call `user` takes part in, once the state shows them in it and `also` holds (or as
    /// it stands after [`JOIN_PATIENCE`]); an unknown or ended call is `call_not_found`, a
    /// caller not in it `not_in_call` (`why` says what to do first).
    pub async fn as_participant(
        &self,
        call_id: &str,
        user: &str,
        also: impl Fn(&CallView) -> bool,
        why: &str,
    ) -> Result<CallView, SignalingError> {
        let call = self
            .when(call_id, JOIN_PATIENCE, |c| {
                !c.ended && c.participants.contains(user) && also(c)
            })
            .await?
            .filter(|c| !c.ended)
            .ok_or(SignalingError::CallNotFound)?;
        if !call.participants.contains(user) {
            return Err(SignalingError::Forbidden("not_in_call", why.to_string()));
        }
        Ok(call)
    }

    /// The call once `ok` holds for it, or as it stands after `patience`: the log reaches this
    /// projection a moment after the writer acknowledged a join, and a client that joined
    /// and signals at once must not be refused for that moment.
    pub async fn when(
        &self,
        call_id: &str,
        patience: Duration,
        ok: impl Fn(&CallView) -> bool,
    ) -> Result<Option<CallView>, SignalingError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let view = self.get(call_id).await?;
            if view.as_ref().is_some_and(&ok) || tokio::time::Instant::now() >= deadline {
                return Ok(view);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
