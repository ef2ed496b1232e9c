//! Where a room stands when the tail has not shown it: the presence projector's snapshot.
//!
//! The projector writes each room's last applied seq and its partition checkpoints in one
//! transaction, and the snapshot is read in one transaction too, so `(checkpoint, seq)` belong
//! together: every event of the room up to `seq` lies before `checkpoint`. Once the tail has
//! handed the hub everything before `checkpoint`, a room it still has not shown had no event
//! since the tail's start, so `seq` is exactly its head and the next log event is `seq + 1`.

use std::time::Duration;

use read_model::presence as keys;
use redis::aio::ConnectionManager;
use schemas::topics::Topic;

use crate::error::FanoutError;
use crate::hub::Hub;

#[derive(Clone)]
pub struct Heads {
    redis: ConnectionManager,
    /// `CHAT_REDIS_PREFIX`: the projector's live generation is looked up under it.
    base_prefix: String,
    partitions: i32,
}

impl Heads {
    pub fn new(redis: ConnectionManager, base_prefix: &str, partitions: i32) -> Self {
        Self {
            redis,
            base_prefix: base_prefix.to_string(),
            partitions,
        }
    }

    async fn prefix(&self) -> Result<String, FanoutError> {
        read_model::live::redis_live(&self.redis, &self.base_prefix)
            .await
            .map_err(|e| FanoutError::Unavailable(e.to_string()))
    }

    /// The projector's checkpoint (next offset) per partition of the room topic; 0 where none.
    pub async fn checkpoints(&self) -> Result<Vec<i64>, FanoutError> {
        let prefix = self.prefix().await?;
        let stored = keys::checkpoint_of(&self.redis, &prefix, Topic::RoomEvents.name())
            .await
            .map_err(|e| FanoutError::Unavailable(e.to_string()))?;
        Ok((0..self.partitions)
            .map(|p| stored.get(&p).copied().unwrap_or(0))
            .collect())
    }

    /// Makes the hub know `room_id`'s head, waiting (bounded) for the tail to pass the
    /// snapshot's checkpoint.
    pub async fn establish(&self, hub: &Hub, room_id: &str) -> Result<(), FanoutError> {
        let prefix = self.prefix().await?;
        let partition = schemas::partition::partition_for(room_id, self.partitions);
        let (checkpoint, seq) = keys::room_snapshot(
            &self.redis,
            &prefix,
            Topic::RoomEvents.name(),
            room_id,
            partition,
        )
        .await
        .map_err(|e| FanoutError::Unavailable(e.to_string()))?;
        hub.reach(partition, checkpoint, Duration::from_secs(10))
            .await?;
        hub.establish(room_id, seq);
        Ok(())
    }
}

impl Heads {
    /// What the presence projector's read model says of `user_id` in `room_id` (see `Access`).
    pub async fn standing(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<keys::Standing, FanoutError> {
        let prefix = self.prefix().await?;
        keys::standing(&self.redis, &prefix, room_id, user_id)
            .await
            .map_err(|e| FanoutError::Unavailable(format!("redis: {e}")))
    }

    /// Whether the presence projector's read model lists `user_id` among the room's members
    /// (asked when the log since the tail's start does not say).
    pub async fn is_member(&self, room_id: &str, user_id: &str) -> Result<bool, FanoutError> {
        let prefix = self.prefix().await?;
        keys::is_member(&self.redis, &prefix, room_id, user_id)
            .await
            .map_err(|e| FanoutError::Unavailable(format!("redis: {e}")))
    }

    /// The rooms the presence projector lists for `user_id`.
    pub async fn rooms_of(&self, user_id: &str) -> Result<Vec<String>, FanoutError> {
        let prefix = self.prefix().await?;
        keys::rooms_of(&self.redis, &prefix, user_id)
            .await
            .map_err(|e| FanoutError::Unavailable(format!("redis: {e}")))
    }

    /// Readiness: Redis answers.
    pub async fn ping(&self) -> Result<(), String> {
        platform::cache::ping(&self.redis).await
    }
}
