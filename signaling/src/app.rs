//! The router: every public route with its documentation, the operations endpoints.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::{Json, Router};
use futures::FutureExt;
use platform::auth::{Caller, TokenVerifier};
use redis::aio::ConnectionManager;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::calls::Calls;
use crate::config::Config;
use crate::error::SignalingError;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::turn::{TurnCredentials, TurnSecret};

pub struct App {
    pub config: Config,
    pub verifier: TokenVerifier,
    pub redis: ConnectionManager,
    pub limits: Limits,
    pub turn: TurnSecret,
    pub calls: Calls,
    /// Group calls' SFU; `None` when this stack runs no Janus.
    pub sfu: Option<Arc<crate::sfu::Sfu>>,
    pub metrics: Metrics,
    /// The call state caught up with the log (`crate::follow`): ready to relay.
    pub caught_up: Arc<std::sync::atomic::AtomicBool>,
}

impl App {
    /// Hands `frame` to the fan-out nodes for the sockets of `to`.
    pub async fn relay(&self, to: &str, frame: String) -> Result<(), SignalingError> {
        let message = platform::cache::RelayedSignal {
            to: to.to_string(),
            frame,
        };
        let payload = serde_json::to_vec(&message).unwrap_or_default();
        let mut redis = self.redis.clone();
        redis::cmd("PUBLISH")
            .arg(platform::cache::call_signals_channel(
                &self.config.redis_prefix,
            ))
            .arg(payload)
            .query_async::<i64>(&mut redis)
            .await?;
        Ok(())
    }
}

pub type AppState = Arc<App>;

impl platform::auth::VerifiesTokens for App {
    fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }
}

/// Credentials for the platform's TURN server, valid `CHAT_TURN_TTL_SECS` and for the caller
/// only (its user id is part of the signed username).
#[utoipa::path(
    post,
    path = "/v1/calls/turn-credentials",
    tag = "calls",
    summary = "Time-limited TURN credentials (coturn REST-API scheme)",
    responses((status = 200, description = "an RTCIceServer for the platform's TURN server", body = TurnCredentials), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn turn_credentials(
    State(app): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<TurnCredentials>, SignalingError> {
    app.limits.turn.check(&caller.sub)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let ttl = app.config.turn_ttl.as_secs();
    let (username, credential) = app.turn.sign(&caller.sub, now + ttl);
    Ok(Json(TurnCredentials {
        urls: app.config.turn_urls.clone(),
        username,
        credential,
        ttl,
    }))
}

fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(turn_credentials))
        .routes(routes!(crate::relay::signal))
        .routes(routes!(crate::sfu::routes::publish))
        .routes(routes!(crate::sfu::routes::subscribe))
        .routes(routes!(crate::sfu::routes::start))
}

/// This tier's part of the platform's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    platform::openapi::finish(routes().split_for_parts().1)
}

pub fn router(app: AppState, registry: prometheus::Registry) -> Result<Router, prometheus::Error> {
    let http_metrics = platform::ops::HttpMetrics::register(&registry)?;
    let redis = app.clone();
    let state = app.clone();
    let ops = platform::ops::Ops::new(registry)
        .dependencies(schemas::kafka::log_checks(
            &app.config.brokers,
            &app.config.registry_url,
        ))
        .probe("redis", move || {
            let app = redis.clone();
            async move { platform::cache::ping(&app.redis).await }.boxed()
        })
        .probe("call_state", move || {
            let caught_up = state.caught_up.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                if caught_up {
                    Ok(())
                } else {
                    Err("still reading the call events of the log".to_string())
                }
            }
            .boxed()
        });
    let (api, _) = routes().split_for_parts();
    let api = platform::ops::api_fallbacks(api).with_state(app);
    let api = http_metrics.around(api);
    Ok(api.merge(ops.router()))
}
