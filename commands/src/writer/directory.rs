//! Which instance owns which room partition, published in Redis so a command that reaches the
//! wrong instance can be forwarded to the owner. Entries expire unless refreshed, so a crashed
//! owner's entries vanish on their own (until then forwarding to it fails with 503).

use redis::aio::ConnectionManager;

use crate::error::CommandError;

/// Seconds an entry lives without refresh; owners refresh every third of it.
pub const ENTRY_TTL_SECS: u64 = 15;

#[derive(Clone)]
pub struct OwnerDirectory {
    redis: ConnectionManager,
    prefix: String,
    me: String,
}

impl OwnerDirectory {
    pub fn new(
        redis: ConnectionManager,
        redis_prefix: &str,
        group: &str,
        advertise_url: &str,
    ) -> Self {
        Self {
            redis,
            prefix: format!("{redis_prefix}commands:{group}:owner:"),
            me: advertise_url.trim_end_matches('/').to_string(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub async fn claim(&self, partitions: &[i32]) -> Result<(), CommandError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        for p in partitions {
            pipe.cmd("SET")
                .arg(format!("{}{p}", self.prefix))
                .arg(&self.me)
                .arg("EX")
                .arg(ENTRY_TTL_SECS)
                .ignore();
        }
        let _: () = pipe.query_async(&mut redis).await?;
        Ok(())
    }

    /// Removes the entry only if it still names this instance.
    pub async fn release(&self, partition: i32) -> Result<(), CommandError> {
        let mut redis = self.redis.clone();
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        let _: i64 = script
            .key(format!("{}{partition}", self.prefix))
            .arg(&self.me)
            .invoke_async(&mut redis)
            .await?;
        Ok(())
    }

    pub async fn owner(&self, partition: i32) -> Result<Option<String>, CommandError> {
        let mut redis = self.redis.clone();
        let owner: Option<String> = redis::cmd("GET")
            .arg(format!("{}{partition}", self.prefix))
            .query_async(&mut redis)
            .await?;
        Ok(owner)
    }
}
