use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use futures::FutureExt;
use mongodb::Database;
use platform::auth::TokenVerifier;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::config::Config;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{files, messages, rooms};

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
        match read_model::live::mongo_live(
            &self.redis,
            &self.config.redis_prefix,
            &self.config.mongo_db,
        )
        .await
        {
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

/// The reads, each documented where it is routed (so none is served undocumented).
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(rooms::list))
        .routes(routes!(rooms::detail))
        .routes(routes!(rooms::members))
        .routes(routes!(rooms::presence))
        .routes(routes!(messages::history))
        .routes(routes!(messages::search))
        .routes(routes!(rooms::unread))
        .routes(routes!(files::download))
}

/// This tier's part of the platform's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    platform::openapi::finish(routes().split_for_parts().1)
}

/// `GET /v1/openapi.json`: the platform's document (see `Config::openapi_file`).
async fn openapi_document(State(app): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::fs::read(&app.config.openapi_file).await {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(_) => axum::Json(openapi()).into_response(),
    }
}

pub fn router(app: AppState, registry: prometheus::Registry) -> Result<Router, prometheus::Error> {
    let http_metrics = platform::ops::HttpMetrics::register(&registry)?;
    let (mongo, redis, pg) = (app.clone(), app.clone(), app.clone());
    let ops = platform::ops::Ops::new(registry)
        .probe("mongo", move || {
            let app = mongo.clone();
            async move { read_model::ping(&app.db()).await }.boxed()
        })
        .probe("redis", move || {
            let app = redis.clone();
            async move { platform::cache::ping(&app.redis).await }.boxed()
        })
        .probe("postgres", move || {
            let app = pg.clone();
            async move { platform::pg::ping(&app.directory).await }.boxed()
        });
    let (api, _) = routes().split_for_parts();
    let api = api
        .route("/v1/openapi.json", axum::routing::get(openapi_document))
        .fallback(|| async {
            platform::ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
            )
        })
        .method_not_allowed_fallback(|| async {
            platform::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            http_metrics,
            platform::ops::HttpMetrics::track,
        ));
    Ok(api.merge(ops.router()))
}
