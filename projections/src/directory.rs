//! The user directory in PostgreSQL, from `chat.user-events`.
//!
//! The one read model whose store has transactions: each batch's rows and its checkpoints are
//! committed together, so a crash re-applies nothing twice and skips nothing. Users are keyed
//! by id and a profile change applies only if its event is newer than the last one applied
//! (UUID v7 ids sort by time), which absorbs the outbox's at-least-once redeliveries.

use schemas::DomainEvent;
use schemas::topics::Topic;
use sqlx::Row;
use sqlx::postgres::PgPool;

use crate::deadletter::DeadLetter;
use crate::error::ProjectionError;
use crate::runner::{Counts, Project};
use crate::source::{Batch, Positions};

pub struct DirectoryProjector {
    pool: PgPool,
}

impl DirectoryProjector {
    pub async fn open(url: &str, schema: &str) -> Result<Self, ProjectionError> {
        let pool =
            platform::pg::connect_in_schema(url, schema, 4, Some(&sqlx::migrate!("./migrations")))
                .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn topics() -> Vec<Topic> {
        vec![Topic::UserEvents]
    }
}

impl Project for DirectoryProjector {
    fn name(&self) -> &'static str {
        "directory"
    }

    async fn checkpoints(&self) -> Result<Positions, ProjectionError> {
        let rows = sqlx::query("SELECT topic, partition, next FROM checkpoints")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    (Topic::from_name(r.get::<String, _>(0).as_str())?, r.get(1)),
                    r.get(2),
                ))
            })
            .collect())
    }

    async fn apply(
        &mut self,
        batch: &Batch,
        _dead_letter: &DeadLetter,
    ) -> Result<Counts, ProjectionError> {
        let mut counts = Counts::default();
        let mut tx = self.pool.begin().await?;
        for record in &batch.records {
            let envelope = record.event.envelope();
            let (Some(user), Ok(event_id)) = (
                envelope.user_id.as_deref(),
                uuid::Uuid::parse_str(&envelope.event_id),
            ) else {
                continue;
            };
            let Ok(user) = uuid::Uuid::parse_str(user) else {
                continue;
            };
            let at = envelope.occurred_at as f64 / 1000.0;
            let changed = match &record.event {
                DomainEvent::UserRegistered(e) => sqlx::query(
                    "INSERT INTO users (user_id, username, display_name, registered_at, updated_at, last_event_id) \
                     VALUES ($1, $2, $3, to_timestamp($4), to_timestamp($4), $5) ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user)
                .bind(&e.username)
                .bind(&e.display_name)
                .bind(at)
                .bind(event_id)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                DomainEvent::UserProfileUpdated(e) => sqlx::query(
                    "UPDATE users SET display_name = $2, avatar_file_id = $3, status_text = $4, updated_at = to_timestamp($5), \
                     last_event_id = $6 WHERE user_id = $1 AND last_event_id < $6",
                )
                .bind(user)
                .bind(&e.display_name)
                .bind(&e.avatar_file_id)
                .bind(&e.status_text)
                .bind(at)
                .bind(event_id)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                _ => continue,
            };
            if changed > 0 {
                counts.applied += 1;
            } else {
                counts.duplicates += 1;
            }
        }
        for ((topic, partition), next) in &batch.positions {
            sqlx::query(
                "INSERT INTO checkpoints (topic, partition, next) VALUES ($1, $2, $3) \
                 ON CONFLICT (topic, partition) DO UPDATE SET next = EXCLUDED.next",
            )
            .bind(topic.name())
            .bind(partition)
            .bind(next)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(counts)
    }

    fn reset(&mut self) {}
}
