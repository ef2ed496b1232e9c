//! Who may read a room on this node: one truth, the log, with one fallback.
//!
//! The truth is what the log showed this node since its tail started (`Hub::verdict`): members
//! always; banned, never; for a room whose whole history the tail holds, public rooms to
//! everyone and private ones to nobody else. When the tail has not seen enough of a room (it
//! is older than what the node read at start), the fallback is the presence projector's read
//! model in Redis (`read_model::presence::standing`: the room's members, bans and visibility).
//! That model lags the log, so an answer of "no" from it is checked against the log's end once
//! more (a room joined or created a moment ago) before the caller is refused. Typing and
//! presence ask the same two places in the same order (`Hub::standing`, then the read model).

use std::sync::Arc;
use std::time::Duration;

use crate::error::FanoutError;
use crate::heads::Heads;
use crate::hub::{Hub, Verdict};
use crate::interest::Interest;
use crate::tail::Watermarks;

pub struct Access {
    /// For the log's end when the tail and the read model do not say yet.
    watermarks: Watermarks,
    /// The node answers for a room from its partition of the log, which it reads only for the
    /// rooms someone here wants.
    interest: Arc<Interest>,
}

impl Access {
    pub fn new(brokers: &str, interest: Arc<Interest>) -> Result<Self, FanoutError> {
        Ok(Self {
            watermarks: Watermarks::new(brokers)?,
            interest,
        })
    }

    /// Waits (bounded) until the tail has handed the hub everything the log holds now for the
    /// room's partition. A room created or joined a moment ago is then known to the hub.
    pub async fn catch_up(&self, hub: &Hub, room_id: &str) -> Result<(), FanoutError> {
        self.interest.want(room_id);
        let partition = self.interest.partition_of(room_id);
        let high = self.watermarks.high(partition).await?;
        hub.reach(partition, high, Duration::from_secs(5)).await
    }

    /// Whether `user_id` may read `room_id`; the node follows the room from here on (a
    /// subscribe or a poll comes next).
    pub async fn check(
        &self,
        hub: &Hub,
        heads: &Heads,
        room_id: &str,
        user_id: &str,
    ) -> Result<(), FanoutError> {
        self.interest.want(room_id);
        if let Some(verdict) = hub.verdict(room_id, user_id) {
            return allowed(verdict);
        }
        let standing = heads.standing(room_id, user_id).await?;
        let fallback = if standing.member {
            Verdict::Allow
        } else if standing.banned {
            Verdict::Banned
        } else if standing.public == Some(true) {
            Verdict::Allow
        } else {
            Verdict::Invisible
        };
        if fallback == Verdict::Allow {
            return Ok(());
        }
        // The read model may not have projected the latest events: the log decides.
        self.catch_up(hub, room_id).await?;
        allowed(hub.verdict(room_id, user_id).unwrap_or(fallback))
    }
}

pub fn allowed(verdict: Verdict) -> Result<(), FanoutError> {
    match verdict {
        Verdict::Allow => Ok(()),
        Verdict::Banned => Err(FanoutError::Forbidden(
            "you are banned from this room".into(),
        )),
        Verdict::Invisible => Err(FanoutError::NotFound),
    }
}
