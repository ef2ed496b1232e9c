//! PostgreSQL persistence. Ids come from a sequence and are never reused, so they stay stable
//! across restarts; registrations under one subject are serialized by an advisory lock so two
//! concurrent registrations cannot both take the next version number.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::normalize::NormalizedSchema;
use crate::{RegistryConfig, RegistryError};
use schemas::compat::{self, Level};

/// A schema as registered under a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    pub schema: String,
}

/// Which version of a subject a request means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Latest,
    Number(i32),
}

impl VersionRef {
    /// Confluent accepts a positive number, `latest`, or `-1` (latest).
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        if s == "latest" || s == "-1" {
            return Ok(VersionRef::Latest);
        }
        match s.parse::<i32>() {
            Ok(v) if v > 0 => Ok(VersionRef::Number(v)),
            _ => Err(RegistryError::InvalidVersion(s.to_string())),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects, creates the configured PostgreSQL schema if needed and migrates it.
    pub async fn connect(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let options = PgConnectOptions::from_str(&config.database_url)?
            .options([("search_path", config.pg_schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        platform::pg::ensure_schema(&pool, &config.pg_schema).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn ping(&self) -> Result<(), RegistryError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let rows = sqlx::query("SELECT DISTINCT subject FROM subject_versions ORDER BY subject")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    pub async fn versions(&self, subject: &str) -> Result<Vec<i32>, RegistryError> {
        let rows =
            sqlx::query("SELECT version FROM subject_versions WHERE subject = $1 ORDER BY version")
                .bind(subject)
                .fetch_all(&self.pool)
                .await?;
        if rows.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        Ok(rows.iter().map(|r| r.get::<i32, _>(0)).collect())
    }

    pub async fn version(
        &self,
        subject: &str,
        version: VersionRef,
    ) -> Result<Registered, RegistryError> {
        let row = match version {
            VersionRef::Latest => {
                sqlx::query(
                    "SELECT sv.version, s.id, s.schema_text FROM subject_versions sv \
                     JOIN schemas s ON s.id = sv.schema_id \
                     WHERE sv.subject = $1 ORDER BY sv.version DESC LIMIT 1",
                )
                .bind(subject)
                .fetch_optional(&self.pool)
                .await?
            }
            VersionRef::Number(v) => {
                sqlx::query(
                    "SELECT sv.version, s.id, s.schema_text FROM subject_versions sv \
                     JOIN schemas s ON s.id = sv.schema_id \
                     WHERE sv.subject = $1 AND sv.version = $2",
                )
                .bind(subject)
                .bind(v)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        match row {
            Some(row) => Ok(Registered {
                subject: subject.to_string(),
                version: row.get(0),
                id: row.get(1),
                schema: row.get(2),
            }),
            None => {
                // Tell "no such subject" from "no such version", as Confluent does.
                self.versions(subject).await?;
                Err(RegistryError::VersionNotFound {
                    subject: subject.to_string(),
                    version: match version {
                        VersionRef::Latest => "latest".to_string(),
                        VersionRef::Number(v) => v.to_string(),
                    },
                })
            }
        }
    }

    pub async fn schema_by_id(&self, id: i32) -> Result<(String, String), RegistryError> {
        let row = sqlx::query("SELECT schema_text, schema_type FROM schemas WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| (r.get(0), r.get(1)))
            .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))
    }

    pub async fn subject_versions_of(&self, id: i32) -> Result<Vec<(String, i32)>, RegistryError> {
        self.schema_by_id(id).await?;
        let rows = sqlx::query(
            "SELECT subject, version FROM subject_versions WHERE schema_id = $1 ORDER BY subject, version",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The version of `subject` whose schema is `schema`, if any.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &NormalizedSchema,
    ) -> Result<Registered, RegistryError> {
        let row = sqlx::query(
            "SELECT sv.version, s.id, s.schema_text FROM subject_versions sv \
             JOIN schemas s ON s.id = sv.schema_id \
             WHERE sv.subject = $1 AND s.fingerprint = $2",
        )
        .bind(subject)
        .bind(&schema.fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Registered {
                subject: subject.to_string(),
                version: row.get(0),
                id: row.get(1),
                schema: row.get(2),
            }),
            None => {
                self.versions(subject).await?;
                Err(RegistryError::SchemaNotFound(format!(
                    "under subject '{subject}'"
                )))
            }
        }
    }

    /// Registers `schema` under `subject`, returning its global id. Idempotent: a schema already
    /// registered under the subject answers its existing id and creates no version.
    pub async fn register(
        &self,
        subject: &str,
        schema: &NormalizedSchema,
    ) -> Result<i32, RegistryError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(subject)
            .execute(&mut *tx)
            .await?;
        let existing = sqlx::query(
            "SELECT s.id FROM subject_versions sv JOIN schemas s ON s.id = sv.schema_id \
             WHERE sv.subject = $1 AND s.fingerprint = $2",
        )
        .bind(subject)
        .bind(&schema.fingerprint)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            return Ok(row.get(0));
        }

        let level = level_in(&mut tx, Some(subject)).await?;
        let rows = sqlx::query(
            "SELECT sv.version, s.schema_text FROM subject_versions sv \
             JOIN schemas s ON s.id = sv.schema_id WHERE sv.subject = $1 ORDER BY sv.version",
        )
        .bind(subject)
        .fetch_all(&mut *tx)
        .await?;
        let mut previous = Vec::with_capacity(rows.len());
        for row in rows {
            let version: i32 = row.get(0);
            let text: String = row.get(1);
            let parsed = NormalizedSchema::parse(&text)?;
            previous.push((version, parsed.parsed));
        }
        compat::check(level, &schema.parsed, &previous).map_err(|details| {
            RegistryError::Incompatible {
                subject: subject.to_string(),
                details,
            }
        })?;

        sqlx::query(
            "INSERT INTO schemas (schema_type, schema_text, fingerprint) VALUES ('AVRO', $1, $2) \
             ON CONFLICT (fingerprint) DO NOTHING",
        )
        .bind(&schema.text)
        .bind(&schema.fingerprint)
        .execute(&mut *tx)
        .await?;
        let id: i32 = sqlx::query("SELECT id FROM schemas WHERE fingerprint = $1")
            .bind(&schema.fingerprint)
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        sqlx::query(
            "INSERT INTO subject_versions (subject, version, schema_id) VALUES \
             ($1, COALESCE((SELECT max(version) FROM subject_versions WHERE subject = $1), 0) + 1, $2)",
        )
        .bind(subject)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(subject, id, "registered schema");
        Ok(id)
    }

    /// Compatibility level of `subject` (its own, else the global one, else BACKWARD); `None`
    /// asks for the global level.
    pub async fn level(&self, subject: Option<&str>) -> Result<Level, RegistryError> {
        let mut conn = self.pool.acquire().await?;
        level_in(&mut conn, subject).await
    }

    /// The level configured on exactly this subject, without falling back.
    pub async fn own_level(&self, subject: &str) -> Result<Option<Level>, RegistryError> {
        let row = sqlx::query("SELECT compatibility FROM compatibility_config WHERE subject = $1")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| stored_level(&r.get::<String, _>(0)))
            .transpose()
    }

    pub async fn set_level(
        &self,
        subject: Option<&str>,
        level: Level,
    ) -> Result<(), RegistryError> {
        sqlx::query(
            "INSERT INTO compatibility_config (subject, compatibility) VALUES ($1, $2) \
             ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility",
        )
        .bind(subject.unwrap_or(""))
        .bind(level.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

async fn level_in(
    conn: &mut sqlx::PgConnection,
    subject: Option<&str>,
) -> Result<Level, RegistryError> {
    let row = sqlx::query(
        "SELECT compatibility FROM compatibility_config WHERE subject = $1 OR subject = '' \
         ORDER BY subject DESC LIMIT 1",
    )
    .bind(subject.unwrap_or(""))
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => stored_level(&row.get::<String, _>(0)),
        None => Ok(Level::DEFAULT),
    }
}

fn stored_level(s: &str) -> Result<Level, RegistryError> {
    Level::parse(s).ok_or_else(|| RegistryError::InvalidCompatibilityLevel(s.to_string()))
}
