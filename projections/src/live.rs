//! Generations of the read models, and which one is live.
//!
//! `replay-tools rebuild` fills a fresh generation (a new MongoDB database, Redis key prefix or
//! ClickHouse database) from the log while the live one keeps serving, then switches over by
//! moving one pointer, and drops the old generation. Readers and the running projectors follow
//! the pointer, so nobody ever sees a half-built model, and a projector that finds the pointer
//! moved reopens on the new generation from that generation's own checkpoints (which live with
//! its data), so the switch neither loses nor repeats an event.
//!
//! - MongoDB: a document in `<CHAT_MONGO_DB>_live` naming the database (`read_model::live`);
//!   without it the live database is `<CHAT_MONGO_DB>` itself.
//! - Redis: pointer key `<CHAT_REDIS_PREFIX>live:redis` holding the generation's key prefix;
//!   without it the prefix is `<CHAT_REDIS_PREFIX>`.
//! - ClickHouse: analysts query stable names, so `<CHAT_CLICKHOUSE_DB>` holds views
//!   (`events`, `messages_per_room_minute`, `daily_active_users`, `call_minutes`) over the live
//!   generation database, swapped in one `RENAME TABLE` statement, and a `generation` table
//!   records which database is live (the first one is `<db>_g0`).

use std::time::{SystemTime, UNIX_EPOCH};

use clickhouse::Client;
use read_model::presence;
use redis::aio::ConnectionManager;
use serde::Deserialize;

use crate::analytics;
use crate::error::ProjectionError;

/// A name for a new generation, unique per second.
pub fn new_generation_suffix() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("g{secs}")
}

// ---------- MongoDB and Redis pointers (their format and reads are the read-model contract) ----------

pub async fn mongo_live(client: &mongodb::Client, base: &str) -> Result<String, ProjectionError> {
    Ok(read_model::live::mongo_live(client, base).await?)
}

pub async fn mongo_switch(
    client: &mongodb::Client,
    base: &str,
    to: &str,
) -> Result<(), ProjectionError> {
    Ok(read_model::live::mongo_switch(client, base, to).await?)
}

pub async fn redis_live(redis: &ConnectionManager, base: &str) -> Result<String, ProjectionError> {
    Ok(read_model::live::redis_live(redis, base).await?)
}

pub async fn redis_switch(
    redis: &ConnectionManager,
    base: &str,
    to: &str,
) -> Result<(), ProjectionError> {
    set_pointer(redis, &read_model::live::redis_pointer(base), to).await
}

async fn set_pointer(
    redis: &ConnectionManager,
    pointer: &str,
    to: &str,
) -> Result<(), ProjectionError> {
    let mut redis = redis.clone();
    let _: () = redis::cmd("SET")
        .arg(pointer)
        .arg(to)
        .query_async(&mut redis)
        .await?;
    Ok(())
}

/// Deletes one generation's keys; returns how many keys were deleted or trimmed.
pub async fn redis_drop(redis: &ConnectionManager, prefix: &str) -> Result<u64, ProjectionError> {
    let mut redis = redis.clone();
    let mut removed = 0u64;
    let patterns: Vec<(String, bool)> = presence::FAMILIES
        .iter()
        .map(|k| (format!("{prefix}{k}*"), false))
        .chain(std::iter::once((
            format!("{prefix}{}*", presence::SESSION_PREFIX),
            true,
        )))
        .collect();
    for (pattern, session) in patterns {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut redis)
                .await?;
            if !keys.is_empty() {
                removed += keys.len() as u64;
                let mut pipe = redis::pipe();
                for key in &keys {
                    if session {
                        pipe.cmd("HDEL")
                            .arg(key)
                            .arg(presence::SESSION_FIELDS)
                            .ignore();
                    } else {
                        pipe.del(key).ignore();
                    }
                }
                let _: () = pipe.query_async(&mut redis).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(removed)
}

// ---------- ClickHouse ----------

/// The tables analysts read, exposed as views in the stable database.
pub const CLICKHOUSE_VIEWS: &[&str] = &[
    "events",
    "messages_per_room_minute",
    "daily_active_users",
    "call_minutes",
];

fn ch(e: clickhouse::error::Error) -> ProjectionError {
    ProjectionError::ClickHouse(e.to_string())
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Named {
    name: String,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct TableEngine {
    name: String,
    engine: String,
}

/// The live generation database, creating the first one (`<db>_g0`, with its views) when the
/// stable database has none yet.
pub async fn clickhouse_live(client: &Client, db: &str) -> Result<String, ProjectionError> {
    exec(client, &format!("CREATE DATABASE IF NOT EXISTS {db}")).await?;
    exec(
        client,
        &format!(
            "CREATE TABLE IF NOT EXISTS {db}.generation (at UInt64, target String) ENGINE = TinyLog"
        ),
    )
    .await?;
    if let Some(live) = clickhouse_current(client, db).await? {
        return Ok(live);
    }
    // The layout before generations kept real tables in `db`: a read model is disposable, so
    // they are dropped and the first generation is projected from the log again.
    let tables: Vec<TableEngine> = client
        .query("SELECT name, engine FROM system.tables WHERE database = ?")
        .bind(db)
        .fetch_all()
        .await
        .map_err(ch)?;
    for t in tables
        .iter()
        .filter(|t| t.name != "generation" && t.engine != "View")
    {
        tracing::warn!(table = %t.name, "dropping a table of the layout before generations");
        exec(client, &format!("DROP TABLE IF EXISTS {db}.{}", t.name)).await?;
    }
    let first = format!("{db}_g0");
    analytics::ensure_schema(client, &first).await?;
    for view in CLICKHOUSE_VIEWS {
        exec(
            client,
            &format!("CREATE VIEW IF NOT EXISTS {db}.{view} AS SELECT * FROM {first}.{view}"),
        )
        .await?;
    }
    exec(
        client,
        &format!(
            "INSERT INTO {db}.generation (at, target) VALUES ({}, '{first}')",
            now_ms()
        ),
    )
    .await?;
    Ok(first)
}

/// The live generation database as recorded, without creating anything.
pub async fn clickhouse_current(
    client: &Client,
    db: &str,
) -> Result<Option<String>, ProjectionError> {
    let rows: Vec<Named> = client
        .query(&format!(
            "SELECT target AS name FROM {db}.generation ORDER BY at DESC LIMIT 1"
        ))
        .fetch_all()
        .await
        .map_err(ch)?;
    Ok(rows.into_iter().next().map(|r| r.name))
}

/// Points the stable views at `to` in one RENAME (atomic for readers), then records it.
pub async fn clickhouse_switch(client: &Client, db: &str, to: &str) -> Result<(), ProjectionError> {
    for view in CLICKHOUSE_VIEWS {
        exec(client, &format!("DROP TABLE IF EXISTS {db}.{view}__next")).await?;
        exec(client, &format!("DROP TABLE IF EXISTS {db}.{view}__prev")).await?;
        exec(
            client,
            &format!("CREATE VIEW {db}.{view}__next AS SELECT * FROM {to}.{view}"),
        )
        .await?;
    }
    let renames: Vec<String> = CLICKHOUSE_VIEWS
        .iter()
        .flat_map(|v| {
            [
                format!("{db}.{v} TO {db}.{v}__prev"),
                format!("{db}.{v}__next TO {db}.{v}"),
            ]
        })
        .collect();
    exec(client, &format!("RENAME TABLE {}", renames.join(", "))).await?;
    exec(
        client,
        &format!(
            "INSERT INTO {db}.generation (at, target) VALUES ({}, '{to}')",
            now_ms()
        ),
    )
    .await?;
    for view in CLICKHOUSE_VIEWS {
        exec(client, &format!("DROP TABLE IF EXISTS {db}.{view}__prev")).await?;
    }
    Ok(())
}

pub async fn clickhouse_drop(client: &Client, generation: &str) -> Result<(), ProjectionError> {
    exec(client, &format!("DROP DATABASE IF EXISTS {generation}")).await
}

async fn exec(client: &Client, sql: &str) -> Result<(), ProjectionError> {
    client.query(sql).execute().await.map_err(ch)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
