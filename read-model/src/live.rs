//! Which generation of a read model is live: the pointers `replay-tools rebuild` moves when it
//! switches over and every reader follows (the switch itself lives with the projectors).
//!
//! - MongoDB: pointer key `<CHAT_REDIS_PREFIX>live:mongo:<CHAT_MONGO_DB>` in Redis holding the
//!   database name; without it the live database is `<CHAT_MONGO_DB>` itself. Kept in Redis,
//!   which answers a poll every second in microseconds.
//! - Redis: pointer key `<CHAT_REDIS_PREFIX>live:redis` holding the generation's key prefix;
//!   without it the prefix is `<CHAT_REDIS_PREFIX>`.

use redis::aio::ConnectionManager;

pub fn mongo_pointer(redis_prefix: &str, base: &str) -> String {
    format!("{redis_prefix}live:mongo:{base}")
}

pub fn redis_pointer(base: &str) -> String {
    format!("{base}live:redis")
}

/// The live MongoDB database of `base`.
pub async fn mongo_live(
    redis: &ConnectionManager,
    redis_prefix: &str,
    base: &str,
) -> redis::RedisResult<String> {
    pointed(redis, &mongo_pointer(redis_prefix, base), base).await
}

/// The live Redis key prefix of `base`.
pub async fn redis_live(redis: &ConnectionManager, base: &str) -> redis::RedisResult<String> {
    pointed(redis, &redis_pointer(base), base).await
}

async fn pointed(
    redis: &ConnectionManager,
    pointer: &str,
    default: &str,
) -> redis::RedisResult<String> {
    let mut redis = redis.clone();
    let value: Option<String> = redis::cmd("GET")
        .arg(pointer)
        .query_async(&mut redis)
        .await?;
    Ok(value.unwrap_or_else(|| default.to_string()))
}
