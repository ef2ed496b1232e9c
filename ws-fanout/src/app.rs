//! The node's HTTP surface: the socket upgrade at `/v1/ws` and the operations endpoints.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures::FutureExt;

use crate::socket::{self, Node};

async fn upgrade(
    State(node): State<Arc<Node>>,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let token = query.get("access_token").cloned();
    let max = node.config.max_frame;
    ws.max_message_size(max)
        .max_frame_size(max)
        // Small buffers keep an idle socket's memory low (tungstenite reads into a 128 KiB
        // buffer by default: 2.7 GB for 19,500 idle sockets, measured); a larger message still
        // accumulates up to the frame limit. The outlet queue holds the backlog.
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(move |ws| socket::serve(node, ws, token))
}

pub fn router(
    node: Arc<Node>,
    registry: prometheus::Registry,
) -> Result<Router, prometheus::Error> {
    let http_metrics = platform::ops::HttpMetrics::register(&registry)?;
    let (redis_node, tail_node) = (node.clone(), node.clone());
    let ops = platform::ops::Ops::new(registry)
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
        });
    let api = Router::new()
        .route("/v1/ws", get(upgrade))
        .route("/v1/poll", get(crate::poll::poll))
        .fallback(|| async {
            platform::ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
            )
        })
        .with_state(node)
        .layer(axum::middleware::from_fn_with_state(
            http_metrics,
            platform::ops::HttpMetrics::track,
        ));
    Ok(api.merge(ops.router()))
}
