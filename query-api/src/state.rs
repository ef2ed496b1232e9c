//! What every handler shares: the app state, built once in `main`, and how it verifies tokens.

use std::sync::Arc;

use mongodb::Database;
use platform::auth::TokenVerifier;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::config::Config;

pub struct App {
    pub config: Config,
    /// The live generation of the history (follows `read_model::live`; see `follow_live`).
    pub db: std::sync::RwLock<Database>,
    /// The live key prefix of the Redis read model.
    pub presence_prefix: std::sync::RwLock<String>,
    pub mongo: mongodb::Client,
    pub redis: ConnectionManager,
    pub directory: PgPool,
    pub verifier: TokenVerifier,
    pub limits: crate::limits::Limits,
}

pub type AppState = Arc<App>;

impl App {
    pub fn db(&self) -> Database {
        match self.db.read() {
            Ok(db) => db.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn presence_prefix(&self) -> String {
        match self.presence_prefix.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads which generation of each read model is live, so a rebuild's switch-over
    /// reaches this process within a second.
    pub async fn follow_live(&self) {
        match read_model::live::mongo_live(&self.mongo, &self.config.mongo_db).await {
            Ok(name) if name != self.db().name() => {
                tracing::info!(db = %name, "the live history generation moved");
                if let Ok(mut db) = self.db.write() {
                    *db = self.mongo.database(&name);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the live history generation"),
        }
        match read_model::live::redis_live(&self.redis, &self.config.redis_prefix).await {
            Ok(prefix) if prefix != self.presence_prefix() => {
                if let Ok(mut p) = self.presence_prefix.write() {
                    *p = prefix;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the live presence generation"),
        }
    }
}

impl platform::auth::VerifiesTokens for App {
    fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }
}
