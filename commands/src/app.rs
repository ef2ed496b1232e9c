//! Shared state of the HTTP handlers and the router.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::get;
use futures::FutureExt;
use platform::auth::TokenVerifier;
use redis::aio::ConnectionManager;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::identity::passwords::Passwords;
use crate::identity::store::IdentityStore;
use crate::identity::throttle::Throttle;
use crate::identity::tokens::Signer;
use crate::ratelimit::RateLimiter;
use crate::writer::Writer;
use crate::{identity, rooms_http};

pub struct App {
    pub config: Config,
    pub store: IdentityStore,
    pub passwords: Passwords,
    pub signer: Signer,
    pub verifier: TokenVerifier,
    pub throttle: Throttle,
    pub redis: ConnectionManager,
    pub writer: Writer,
    pub limiter: RateLimiter,
    pub http: reqwest::Client,
    pub files: crate::files::FileStore,
}

pub type AppState = Arc<App>;

impl App {
    /// The client address for login throttling: the peer, or the first `X-Forwarded-For` hop
    /// when the peer is the local proxy (nginx on loopback).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> String {
        if peer.ip().is_loopback()
            && let Some(forwarded) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())
            && let Some(first) = forwarded
                .split(',')
                .next()
                .map(str::trim)
                .filter(|s| !s.is_empty())
        {
            return first.to_string();
        }
        peer.ip().to_string()
    }
}

impl platform::auth::VerifiesTokens for App {
    fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }
}

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
        });
    let max_body = app.config.max_body_bytes;
    // The multipart envelope around the file adds a little to the file's own limit.
    let max_upload = app.config.max_upload_bytes as usize + 64 * 1024;
    let ownership_state = app.clone();
    // Every room command goes through the forwarding layer to its room's writer.
    let (api, _) = rooms()
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::forward::to_owner,
        ))
        .merge(identity_and_files(max_upload))
        .split_for_parts();
    let api = api
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
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            http_metrics,
            platform::ops::HttpMetrics::track,
        ));
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
