//! PostgreSQL helpers shared by the tiers that own tables.

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Creates `schema` if it is missing. `CREATE SCHEMA IF NOT EXISTS` is not safe against a
/// concurrent twin (two instances starting together: one fails on the catalog's unique index),
/// so creation is serialized by an advisory lock on the schema name.
pub async fn ensure_schema(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    if schema.is_empty()
        || !schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(sqlx::Error::Configuration(
            format!("schema name {schema:?} must be a lowercase SQL identifier").into(),
        ));
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('create schema ' || $1))")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// A pool whose connections work in `schema` (its `search_path`), waiting at most 5 s for a
/// connection. The tier that owns the schema passes its migrations: the schema is then made if
/// missing and brought up to date.
pub async fn connect_in_schema(
    url: &str,
    schema: &str,
    max_connections: u32,
    owner: Option<&Migrator>,
) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.options([("search_path", schema)]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    if let Some(migrations) = owner {
        ensure_schema(&pool, schema).await?;
        migrations
            .run(&pool)
            .await
            .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
    }
    Ok(pool)
}

/// Readiness: PostgreSQL answers a trivial query.
pub async fn ping(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
