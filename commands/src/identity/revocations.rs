//! Keeps the revocation marks in Redis equal to what PostgreSQL says.
//!
//! PostgreSQL is the truth about revoked sessions (and the log carries each revocation to the
//! other tiers as `SessionRevoked`); the Redis mark is the cache every tier's verifier checks per
//! request. The handlers write a mark at once; this keeper repairs what they could not: every
//! second it writes marks for the sessions revoked since its last look, so a mark whose write
//! failed (Redis down at a logout or a refresh-token reuse) appears within a second of Redis
//! answering again. A Redis that lost its data (a restart of a server that keeps nothing) has lost
//! the keeper's sentinel key too: verifiers then refuse every token with 503 until the keeper has
//! written back every mark still needed (sessions revoked within an access token's lifetime) and
//! set the sentinel again, so a restart never revives a revoked token.

use std::time::Duration;

use platform::auth::{revocations_kept_key, revoked_session_key};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::error::CommandError;
use crate::identity::store::IdentityStore;

/// How far back the incremental look reaches again (revocations committed out of order).
const OVERLAP_MS: i64 = 5_000;

pub struct Keeper {
    pub store: IdentityStore,
    pub redis: ConnectionManager,
    pub prefix: String,
    /// How long a mark must live after its revocation: an access token's lifetime and a margin.
    pub mark_ttl: Duration,
}

impl Keeper {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut seen_until: Option<i64> = None;
        while !shutdown.is_cancelled() {
            match self.sync(seen_until).await {
                Ok(until) => seen_until = Some(until),
                Err(e) => tracing::warn!(error = %e, "revocation marks not synced; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Writes the marks revoked since `seen_until` (all still needed when Redis lost them);
    /// returns how far it has seen.
    async fn sync(&self, seen_until: Option<i64>) -> Result<i64, CommandError> {
        let mut redis = self.redis.clone();
        let sentinel = revocations_kept_key(&self.prefix);
        let kept: bool = redis::cmd("EXISTS")
            .arg(&sentinel)
            .query_async(&mut redis)
            .await?;
        let now = schemas::envelope::now_ms();
        let ttl_ms = self.mark_ttl.as_millis() as i64;
        let since = match seen_until {
            Some(until) if kept => until - OVERLAP_MS,
            _ => now - ttl_ms,
        };
        let revoked = self.store.revoked_since(since).await?;
        let mut pipe = redis::pipe();
        let mut writes = 0;
        for (session, at) in &revoked {
            let left_ms = at + ttl_ms - now;
            if left_ms > 0 {
                writes += 1;
                pipe.cmd("SET")
                    .arg(revoked_session_key(&self.prefix, &session.to_string()))
                    .arg(1)
                    .arg("PX")
                    .arg(left_ms)
                    .ignore();
            }
        }
        if !kept {
            writes += 1;
            pipe.cmd("SET").arg(&sentinel).arg(now).ignore();
        }
        // An empty pipeline is an error to the client, not a no-op.
        if writes > 0 {
            let _: () = pipe.query_async(&mut redis).await?;
        }
        if !kept {
            tracing::warn!(
                marks = revoked.len(),
                "revocation marks written back to a Redis that had none; tokens verify again"
            );
        }
        Ok(revoked
            .last()
            .map_or(since.max(now - OVERLAP_MS), |(_, at)| *at))
    }
}
