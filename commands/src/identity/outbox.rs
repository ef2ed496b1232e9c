//! Relays queued user events from the `outbox` table to `chat.user-events`.
//!
//! Exactly one relay runs per PostgreSQL schema at a time (a session advisory lock elects it),
//! so events leave in the order they were committed. Delivery is at-least-once: a crash between
//! the broker's acknowledgement and marking the rows published re-sends them, and consumers
//! dedupe by `event_id`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use schemas::DomainEvent;
use sqlx::postgres::PgListener;
use sqlx::{Connection, Row};
use tokio_util::sync::CancellationToken;

use crate::error::CommandError;
use crate::identity::store::IdentityStore;
use crate::log::{EventLog, delivered};

const BATCH: i64 = 500;

pub async fn run(store: IdentityStore, log: Arc<EventLog>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Err(e) = lead(&store, &log, &shutdown).await {
            tracing::warn!(error = %e, "outbox relay interrupted; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Takes the relay lock when free and relays until shutdown or an error.
async fn lead(
    store: &IdentityStore,
    log: &EventLog,
    shutdown: &CancellationToken,
) -> Result<(), CommandError> {
    let mut lock_conn = store.pool().acquire().await?.detach();
    let leader: bool =
        sqlx::query("SELECT pg_try_advisory_lock(hashtext('chat_outbox:' || current_schema()))")
            .fetch_one(&mut lock_conn)
            .await?
            .get(0);
    if !leader {
        return Ok(());
    }
    tracing::info!("outbox relay elected");
    let mut listener = PgListener::connect_with(store.pool()).await?;
    listener.listen("chat_outbox").await?;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let relayed = relay_batch(store, log).await?;
        if relayed < BATCH as usize {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = listener.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    // Also proves the lock connection is alive; losing it loses leadership.
                    lock_conn.ping().await?;
                }
            }
        }
    }
    let _ = lock_conn.close().await;
    Ok(())
}

async fn relay_batch(store: &IdentityStore, log: &EventLog) -> Result<usize, CommandError> {
    let rows =
        sqlx::query("SELECT id, event FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1")
            .bind(BATCH)
            .fetch_all(store.pool())
            .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.get(0);
        let json: serde_json::Value = row.get(1);
        let event: DomainEvent = serde_json::from_value(json)
            .map_err(|e| CommandError::Internal(format!("outbox row {id} is not an event: {e}")))?;
        deliveries.push(log.send(&event, None).await?);
        ids.push(id);
    }
    for result in join_all(deliveries.into_iter().map(delivered)).await {
        result?;
    }
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(store.pool())
        .await?;
    tracing::debug!(count = ids.len(), "outbox relayed");
    Ok(ids.len())
}
