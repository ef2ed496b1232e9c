//! PostgreSQL side of identity: users, sessions, refresh-token families and the outbox rows
//! written in the same transaction as each change.

use std::time::Duration;

use schemas::DomainEvent;
use sqlx::Row;
use sqlx::postgres::PgPool;
use uuid::Uuid;

use crate::error::CommandError;

#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub email: String,
}

pub struct LoginRecord {
    pub id: Uuid,
    pub username: String,
    pub password_hash: String,
}

/// A session as a login starts it.
pub struct NewSession<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub refresh_hash: &'a [u8],
    /// How long a refresh token lives unused.
    pub refresh_ttl: Duration,
    /// The session's absolute lifetime.
    pub lifetime: Duration,
    pub user_agent: Option<&'a str>,
    pub ip: &'a str,
}

/// What a registration led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Created,
    /// The e-mail address belongs to another account: nothing was created, and the caller is
    /// not told (answering differently would let anyone test which addresses are registered).
    EmailInUse,
}

/// What presenting a refresh token led to.
pub enum Rotation {
    /// The token was valid and is now spent; the new one replaces it.
    Rotated {
        user_id: Uuid,
        session_id: Uuid,
        username: String,
    },
    /// The token was already spent: someone replays it. The whole session is now revoked.
    Reused { user_id: Uuid, session_id: Uuid },
    /// Unknown, expired, or its session was revoked.
    Invalid,
}

#[derive(Clone)]
pub struct IdentityStore {
    pool: PgPool,
}

impl IdentityStore {
    pub async fn connect(url: &str, schema: &str) -> Result<Self, CommandError> {
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(CommandError::Internal(format!(
                "CHAT_COMMANDS_PG_SCHEMA={schema:?} must be a lowercase SQL identifier"
            )));
        }
        let pool =
            platform::pg::connect_in_schema(url, schema, 16, Some(&sqlx::migrate!("./migrations")))
                .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the account and queues its `UserRegistered` event in one transaction.
    pub async fn create_user(
        &self,
        id: Uuid,
        email: &str,
        username: &str,
        password_hash: &str,
        event: &DomainEvent,
    ) -> Result<Registration, CommandError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (id, email, username, password_hash) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(email)
        .bind(username)
        .bind(password_hash)
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(db)) = &inserted
            && db.is_unique_violation()
        {
            let taken = CommandError::Conflict("username_taken", "that username is taken".into());
            if db.constraint() != Some("idx_users_email") {
                return Err(taken);
            }
            // Both may be taken; the user name is public, so saying so reveals nothing.
            drop(tx);
            let name_taken: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE username = $1)")
                    .bind(username)
                    .fetch_one(&self.pool)
                    .await?;
            return if name_taken {
                Err(taken)
            } else {
                Ok(Registration::EmailInUse)
            };
        }
        inserted?;
        enqueue(&mut tx, event).await?;
        tx.commit().await?;
        Ok(Registration::Created)
    }

    /// The account a login (username or e-mail, any case) names.
    pub async fn find_login(&self, login: &str) -> Result<Option<LoginRecord>, CommandError> {
        let login = login.trim();
        let row = sqlx::query(
            "SELECT id, username, password_hash FROM users WHERE username = lower($1) OR lower(email) = lower($1) LIMIT 1",
        )
        .bind(login)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| LoginRecord {
            id: r.get(0),
            username: r.get(1),
            password_hash: r.get(2),
        }))
    }

    /// The id of the account with this (normalized) username.
    pub async fn user_named(&self, username: &str) -> Result<Option<Uuid>, CommandError> {
        let row = sqlx::query("SELECT id FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn user(&self, id: Uuid) -> Result<Option<User>, CommandError> {
        let row = sqlx::query("SELECT id, username, email FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| User {
            id: r.get(0),
            username: r.get(1),
            email: r.get(2),
        }))
    }

    /// Starts a session with its first refresh token.
    pub async fn create_session(&self, session: NewSession<'_>) -> Result<(), CommandError> {
        let NewSession {
            id: session_id,
            user_id,
            refresh_hash,
            refresh_ttl: ttl,
            lifetime,
            user_agent,
            ip,
        } = session;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, expires_at, user_agent, ip) \
             VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5)",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(lifetime.as_secs_f64())
        .bind(user_agent)
        .bind(ip)
        .execute(&mut *tx)
        .await?;
        issue_refresh(&mut tx, refresh_hash, session_id, user_id, ttl).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Spends `old_hash` and issues `new_hash` in the same family, or detects reuse. The row
    /// lock makes two concurrent refreshes with one token resolve as one rotation and one reuse.
    pub async fn rotate(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        ttl: Duration,
        revoked_event: impl FnOnce(Uuid, Uuid) -> DomainEvent,
    ) -> Result<Rotation, CommandError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT t.session_id, t.spent_at IS NOT NULL, \
                    t.expires_at < now() OR s.expires_at < now(), s.revoked_at IS NOT NULL, \
                    s.user_id, u.username \
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id \
             WHERE t.token_hash = $1 FOR UPDATE OF t, s",
        )
        .bind(old_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Rotation::Invalid);
        };
        let session_id: Uuid = row.get(0);
        let spent: bool = row.get(1);
        let expired: bool = row.get(2);
        let revoked: bool = row.get(3);
        let user_id: Uuid = row.get(4);
        let username: String = row.get(5);
        if revoked || expired {
            return Ok(Rotation::Invalid);
        }
        if spent {
            revoke_in(&mut tx, session_id, "refresh_token_reuse").await?;
            enqueue(&mut tx, &revoked_event(user_id, session_id)).await?;
            tx.commit().await?;
            return Ok(Rotation::Reused {
                user_id,
                session_id,
            });
        }
        sqlx::query("UPDATE refresh_tokens SET spent_at = now() WHERE token_hash = $1")
            .bind(old_hash)
            .execute(&mut *tx)
            .await?;
        issue_refresh(&mut tx, new_hash, session_id, user_id, ttl).await?;
        tx.commit().await?;
        Ok(Rotation::Rotated {
            user_id,
            session_id,
            username,
        })
    }

    /// Revokes a session (logout). Returns false when it was already revoked.
    pub async fn revoke_session(
        &self,
        session_id: Uuid,
        reason: &str,
        event: &DomainEvent,
    ) -> Result<bool, CommandError> {
        let mut tx = self.pool.begin().await?;
        let changed = revoke_in(&mut tx, session_id, reason).await?;
        if changed {
            enqueue(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Sessions revoked after `since_ms` (Unix ms), oldest first: `(session, revoked at ms)`.
    pub async fn revoked_since(&self, since_ms: i64) -> Result<Vec<(Uuid, i64)>, CommandError> {
        let rows = sqlx::query(
            "SELECT id, (extract(epoch FROM revoked_at) * 1000)::bigint FROM sessions \
             WHERE revoked_at > to_timestamp($1 / 1000.0) ORDER BY revoked_at",
        )
        .bind(since_ms as f64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn ping(&self) -> Result<(), CommandError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

async fn revoke_in(
    tx: &mut sqlx::PgConnection,
    session_id: Uuid,
    reason: &str,
) -> Result<bool, CommandError> {
    let result = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoke_reason = $2 WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(session_id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Queues an event for the relay and wakes it.
async fn enqueue(tx: &mut sqlx::PgConnection, event: &DomainEvent) -> Result<(), CommandError> {
    let json = serde_json::to_value(event).map_err(|e| CommandError::Internal(e.to_string()))?;
    sqlx::query("INSERT INTO outbox (event) VALUES ($1)")
        .bind(json)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify('chat_outbox', '')")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Stores a refresh token of the session and marks its user active (a login or a rotation).
async fn issue_refresh(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    hash: &[u8],
    session_id: Uuid,
    user_id: Uuid,
    ttl: Duration,
) -> Result<(), sqlx::Error> {
    // A refresh token lives `ttl` unused, and never past its session's absolute lifetime.
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, expires_at) \
         SELECT $1, $2, LEAST(now() + make_interval(secs => $3), s.expires_at) \
         FROM sessions s WHERE s.id = $2",
    )
    .bind(hash)
    .bind(session_id)
    .bind(ttl.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE users SET last_active = now() WHERE id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
