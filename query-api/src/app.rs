//! The router: every public route with its documentation, the operations endpoints.

use axum::Router;
use axum::extract::State;
use futures::FutureExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{files, messages, rooms};

pub use crate::state::{App, AppState};

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
        })
        .pool("postgres", app.directory.clone());
    let (api, _) = routes().split_for_parts();
    let api = platform::ops::api_fallbacks(api)
        .route("/v1/openapi.json", axum::routing::get(openapi_document))
        .with_state(app);
    let api = http_metrics.around(api);
    Ok(api.merge(ops.router()))
}
