//! The router: every public route with its documentation, the operations endpoints.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use futures::FutureExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{calls_http, identity, rooms_http};

pub use crate::state::{App, AppState};

/// The room commands, each documented where it is routed (so none is served undocumented).
fn rooms() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(rooms_http::create_room))
        .routes(routes!(rooms_http::update_room))
        .routes(routes!(rooms_http::join))
        .routes(routes!(rooms_http::leave))
        .routes(routes!(rooms_http::invite))
        .routes(routes!(rooms_http::ban))
        .routes(routes!(rooms_http::set_role))
        .routes(routes!(rooms_http::post_message))
        .routes(routes!(
            rooms_http::edit_message,
            rooms_http::delete_message
        ))
        .routes(routes!(rooms_http::react, rooms_http::unreact))
        .routes(routes!(rooms_http::mark_read))
        .routes(routes!(calls_http::start))
        .routes(routes!(calls_http::join))
        .routes(routes!(calls_http::leave))
        .routes(routes!(calls_http::decline))
        .routes(routes!(calls_http::end))
}

/// Identity and uploads (uploads take bodies up to `max_upload` bytes).
fn identity_and_files(max_upload: usize) -> OpenApiRouter<AppState> {
    use identity::handlers;
    OpenApiRouter::new()
        .routes(routes!(handlers::register))
        .routes(routes!(handlers::login))
        .routes(routes!(handlers::refresh))
        .routes(routes!(handlers::logout))
        .routes(routes!(handlers::jwks))
        .routes(routes!(handlers::me))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(crate::files::upload))
                .layer(DefaultBodyLimit::max(max_upload)),
        )
}

/// This tier's part of the platform's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, doc) = rooms().merge(identity_and_files(0)).split_for_parts();
    platform::openapi::finish(doc)
}

pub fn router(app: AppState, registry: prometheus::Registry) -> Result<Router, prometheus::Error> {
    let http_metrics = platform::ops::HttpMetrics::register(&registry)?;
    let probe_app = app.clone();
    let probe_redis = app.clone();
    let probe_writer = app.clone();
    let ops = platform::ops::Ops::new(registry)
        .probe("postgres", move || {
            let app = probe_app.clone();
            async move { app.store.ping().await.map_err(|e| e.to_string()) }.boxed()
        })
        .probe("redis", move || {
            let app = probe_redis.clone();
            async move { platform::cache::ping(&app.redis).await }.boxed()
        })
        .probe("writer", move || {
            let app = probe_writer.clone();
            async move { app.writer.readiness() }.boxed()
        })
        .pool("postgres", app.store.pool().clone())
        .dependencies(schemas::kafka::log_checks(
            &app.config.brokers,
            &app.config.registry_url,
        ));
    let max_body = app.config.max_body_bytes;
    // The multipart envelope around the file adds a little to the file's own limit.
    let max_upload = app.config.max_upload_bytes as usize + 64 * 1024;
    let ownership_state = app.clone();
    // Every room command goes through the forwarding layer to its room's writer.
    let forward = || axum::middleware::from_fn_with_state(app.clone(), crate::forward::to_owner);
    let (api, _) = rooms()
        .route_layer(forward())
        .merge(identity_and_files(max_upload))
        .split_for_parts();
    // Undocumented on purpose: only the platform's own tiers call it.
    let internal = Router::new()
        .route(
            "/internal/rooms/{room_id}/calls/{call_id}/drop",
            axum::routing::post(calls_http::drop_disconnected),
        )
        .route_layer(forward());
    let api = api.merge(internal);
    let api = platform::ops::api_fallbacks(api)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app);
    let api = http_metrics.around(api);
    let ownership_app = ownership_state.clone();
    let ownership = Router::new().route(
        "/ownership",
        get(move || {
            let app = ownership_app.clone();
            async move { axum::Json(app.writer.ownership()) }
        }),
    );
    Ok(api.merge(ops.router()).merge(ownership))
}
