//! Who is in which call, as signaling needs it to relay: kept in Redis, so any signaling
//! instance answers for any call and a restarted one knows every call still going on.
//!
//! The state is a projection of the call events on `chat.room-events` (`crate::follow`),
//! applied idempotently: each call remembers the `seq` of the last event applied to it, and a
//! record read again (a restart before its offset was committed) changes nothing.

use std::collections::HashSet;
use std::time::Duration;

use redis::aio::ConnectionManager;
use schemas::DomainEvent;

use crate::error::SignalingError;

/// How long a call's state outlives its last event: longer than any call lasts, so an ended
/// call's seq still guards against a late re-read reviving it.
const STATE_TTL_SECS: u64 = 7 * 24 * 3600;

/// Applies one call event. KEYS: the call's hash, its participants' set. ARGV: seq, op,
/// member, room, ttl. A call that ended takes nobody in again.
const APPLY: &str = r#"
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if seq <= last then return 0 end
local ended = redis.call('HGET', KEYS[1], 'status') == 'ended'
redis.call('HSET', KEYS[1], 'seq', seq, 'room_id', ARGV[4])
if ARGV[2] == 'ended' then
  redis.call('HSET', KEYS[1], 'status', 'ended')
  redis.call('DEL', KEYS[2])
elseif not ended then
  redis.call('HSET', KEYS[1], 'status', 'on')
  if ARGV[2] == 'left' then
    redis.call('SREM', KEYS[2], ARGV[3])
  else
    redis.call('SADD', KEYS[2], ARGV[3])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
return 1
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
        let (op, call_id, member) = match event {
            DomainEvent::CallStarted(e) => ("started", &e.call_id, e.initiator_id.as_str()),
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
        redis::Script::new(APPLY)
            .key(call)
            .key(members)
            .arg(seq)
            .arg(op)
            .arg(member)
            .arg(room)
            .arg(STATE_TTL_SECS)
            .invoke_async::<i64>(&mut redis)
            .await?;
        Ok(true)
    }

    pub async fn get(&self, call_id: &str) -> Result<Option<CallView>, SignalingError> {
        let (call, members) = self.keys(call_id);
        let mut redis = self.redis.clone();
        let (fields, participants): (Vec<Option<String>>, HashSet<String>) = redis::pipe()
            .cmd("HMGET")
            .arg(&call)
            .arg("room_id")
            .arg("status")
            .cmd("SMEMBERS")
            .arg(&members)
            .query_async(&mut redis)
            .await?;
        let (Some(Some(room_id)), status) = (fields.first().cloned(), fields.get(1).cloned())
        else {
            return Ok(None);
        };
        Ok(Some(CallView {
            room_id,
            ended: status.flatten().as_deref() == Some("ended"),
            participants,
        }))
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
