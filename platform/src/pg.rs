//! PostgreSQL helpers shared by the tiers that own tables.

use sqlx::PgPool;

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

/// Readiness: PostgreSQL answers a trivial query.
pub async fn ping(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
