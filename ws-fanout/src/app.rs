//! The node's HTTP surface: the socket upgrade at `/v1/ws` and the operations endpoints.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::response::Response;
use futures::FutureExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::socket::{self, Node};

/// The query of a socket upgrade.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UpgradeQuery {
    /// The access token, for clients that cannot set headers on a WebSocket (browsers); others
    /// send `{"type":"auth","token":...}` as their first frame instead.
    access_token: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "realtime",
    summary = "Open the WebSocket (frames in API.md): subscribe to rooms, resume by seq, send, type",
    params(UpgradeQuery),
    responses(
        (status = 101, description = "switched to the WebSocket protocol"),
        (status = 400, description = "not a WebSocket upgrade request (plain text)"),
        (status = 426, description = "the connection cannot be upgraded (plain text)"),
    )
)]
async fn upgrade(
    State(node): State<Arc<Node>>,
    Query(query): Query<UpgradeQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let token = query.access_token;
    let max = node.config.max_frame;
    ws.max_message_size(max)
        .max_frame_size(max)
        // Small buffers keep an idle socket's memory low (tungstenite reads into a 128 KiB
        // buffer by default: 2.7 GB for 19,500 idle sockets, measured); a larger message still
        // accumulates up to the frame limit. tungstenite zero-fills the read buffer's spare
        // part before every read attempt, and the socket loop attempts one on every wake-up,
        // including the many that only write an event (2% of the node's CPU under load with
        // 4 KiB, perf): client frames are small, so 1 KiB costs them at most a few more reads.
        // The outlet queue holds the backlog, and a write takes what is queued into one
        // buffer (`socket::WRITE_BATCH_BYTES`) for one flush.
        .read_buffer_size(1024)
        .write_buffer_size(socket::WRITE_BATCH_BYTES)
        .on_upgrade(move |ws| socket::serve(node, ws, token))
}

/// The socket and its long-polling fallback, each documented where it is routed.
fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::new()
        .routes(routes!(upgrade))
        .routes(routes!(crate::poll::poll))
}

/// This tier's part of the platform's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    platform::openapi::finish(routes().split_for_parts().1)
}

pub fn router(
    node: Arc<Node>,
    registry: prometheus::Registry,
) -> Result<Router, prometheus::Error> {
    let http_metrics = platform::ops::HttpMetrics::register(&registry)?;
    let (redis_node, tail_node, fast_node) = (node.clone(), node.clone(), node.clone());
    let ops = platform::ops::Ops::new(registry)
        .dependencies(schemas::kafka::log_checks(
            &node.config.brokers,
            &node.config.registry_url,
        ))
        .probe("redis", move || {
            let node = redis_node.clone();
            async move { node.heads.ping().await }.boxed()
        })
        .probe("log_tail", move || {
            let node = tail_node.clone();
            async move {
                if node.hub.caught_up() {
                    Ok(())
                } else {
                    Err("the log tail is still reading what the log held at start".to_string())
                }
            }
            .boxed()
        })
        .probe("fast_channel", move || {
            let live = fast_node
                .fast_subscribed
                .load(std::sync::atomic::Ordering::Relaxed);
            async move {
                if live {
                    Ok(())
                } else {
                    Err("not subscribed to the fast channel (Redis pub/sub) yet".to_string())
                }
            }
            .boxed()
        });
    let (api, _) = routes().split_for_parts();
    let api = platform::ops::api_fallbacks(api).with_state(node);
    let api = http_metrics.around(api);
    Ok(api.merge(ops.router()))
}
