//! Which generation of a read model is live: the pointers `replay-tools rebuild` moves when it
//! switches over and every reader follows (the switch itself lives with the projectors).
//!
//! - MongoDB: document `{_id: <CHAT_MONGO_DB>, db: <generation>}` in collection `live` of the
//!   database `<CHAT_MONGO_DB>_live`; without it the live database is `<CHAT_MONGO_DB>` itself.
//!   Kept with the data it points at, not in Redis: Redis here keeps nothing across a restart,
//!   and a lost pointer sent every reader and the projector back to a dropped generation. A
//!   lookup by `_id`, polled once a second.
//! - Redis: pointer key `<CHAT_REDIS_PREFIX>live:redis` holding the generation's key prefix;
//!   without it the prefix is `<CHAT_REDIS_PREFIX>`.

use redis::aio::ConnectionManager;

/// The database holding the MongoDB pointers of `base` (never a generation, so never dropped).
pub fn mongo_pointers(base: &str) -> String {
    format!("{base}_live")
}

pub fn redis_pointer(base: &str) -> String {
    format!("{base}live:redis")
}

/// The collection of `base`'s pointer document.
fn mongo_pointer_collection(
    client: &mongodb::Client,
    base: &str,
) -> mongodb::Collection<mongodb::bson::Document> {
    client.database(&mongo_pointers(base)).collection("live")
}

/// The live MongoDB database of `base`.
pub async fn mongo_live(client: &mongodb::Client, base: &str) -> mongodb::error::Result<String> {
    let found = mongo_pointer_collection(client, base)
        .find_one(mongodb::bson::doc! {"_id": base})
        .await?;
    Ok(found
        .and_then(|d| d.get_str("db").ok().map(str::to_string))
        .unwrap_or_else(|| base.to_string()))
}

/// Makes `to` the live MongoDB database of `base`.
pub async fn mongo_switch(
    client: &mongodb::Client,
    base: &str,
    to: &str,
) -> mongodb::error::Result<()> {
    mongo_pointer_collection(client, base)
        .update_one(
            mongodb::bson::doc! {"_id": base},
            mongodb::bson::doc! {"$set": {"db": to}},
        )
        .upsert(true)
        .await?;
    Ok(())
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
