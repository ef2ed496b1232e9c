//! Long polling for clients without WebSocket: `GET /v1/poll?room_id&since_seq&wait_ms`.
//!
//! A poll is a short-lived subscription: it joins the room's line exactly as a socket does
//! (backlog after `since_seq`, then live events, under the room's lock), so it sees the same
//! order with no gap and no duplicate. It answers as soon as it has events, or empty when
//! `wait_ms` passes; the client polls again with `next_since_seq`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::FanoutError;
use crate::hub::{Joined, Outlet};
use crate::line::Frame;
use crate::socket::Node;

/// Events one answer carries at most; the client polls again for the rest.
pub const MAX_EVENTS: usize = 500;
/// The longest a poll waits (nginx and most proxies cut idle requests at 60 s).
pub const MAX_WAIT_MS: u64 = 30_000;
/// After the first event arrives, how long the answer waits for more (batching a burst).
const LINGER: Duration = Duration::from_millis(20);

#[utoipa::path(
    get,
    path = "/v1/poll",
    tag = "realtime",
    summary = "Long-polling fallback: the room's events after since_seq, waiting up to wait_ms for one",
    params(
        ("room_id" = String, Query, description = "the room"),
        ("since_seq" = i64, Query, description = "the last seq the client has"),
        ("wait_ms" = Option<i64>, Query, description = "how long to wait for an event, at most 25000"),
        ("access_token" = Option<String>, Query, description = "instead of the Authorization header"),
    ),
    responses((status = 200, description = "{events: [event], resync?}: events in seq order", body = Object), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn poll(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match answer(&node, &headers, &query).await {
        Ok(body) => body.into_response(),
        Err(e) => platform::ApiError::from(e).into_response(),
    }
}

fn token(headers: &HeaderMap, query: &HashMap<String, String>) -> Result<String, FanoutError> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| FanoutError::Invalid("the Authorization header is not text".into()))?;
        return value
            .strip_prefix("Bearer ")
            .map(str::to_string)
            .ok_or(FanoutError::Auth(platform::auth::AuthError::Missing));
    }
    query
        .get("access_token")
        .cloned()
        .ok_or(FanoutError::Auth(platform::auth::AuthError::Missing))
}

async fn answer(
    node: &Arc<Node>,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Json<Value>, FanoutError> {
    let token = token(headers, query)?;
    let claims = node.verifier.verify(&token).await?;
    node.limits.polls.check(&claims.sub)?;
    let room_id = query
        .get("room_id")
        .ok_or_else(|| FanoutError::Invalid("room_id is required".into()))?;
    uuid::Uuid::parse_str(room_id)
        .map_err(|_| FanoutError::Invalid("room_id must be a UUID".into()))?;
    let since: i64 = query
        .get("since_seq")
        .ok_or_else(|| FanoutError::Invalid("since_seq is required (0 for the start)".into()))?
        .parse()
        .ok()
        .filter(|s: &i64| *s >= 0)
        .ok_or_else(|| FanoutError::Invalid("since_seq must be a non-negative integer".into()))?;
    let wait_ms: u64 = match query.get("wait_ms") {
        None => 25_000,
        Some(w) => w
            .parse()
            .ok()
            .filter(|w| *w <= MAX_WAIT_MS)
            .ok_or_else(|| FanoutError::Invalid(format!("wait_ms must be 0 to {MAX_WAIT_MS}")))?,
    };
    node.access
        .check(&node.hub, &node.heads, room_id, &claims.sub)
        .await?;

    let (outlet, mut rx) = Outlet::new(node.next_socket_id(), claims.sub.clone(), MAX_EVENTS + 1);
    let join = || {
        node.hub
            .join(room_id, Some(since), &outlet, |_| Frame::from_static(""))
    };
    let mut joined = join();
    if joined == Joined::Unknown {
        node.heads.establish(&node.hub, room_id).await?;
        joined = join();
    }
    if matches!(joined, Joined::Ahead { .. }) {
        // Seen elsewhere; this node may not have read that far yet (see `socket::subscribe`).
        node.access.catch_up(&node.hub, room_id).await?;
        joined = join();
    }
    match joined {
        Joined::Live { .. } | Joined::Behind => {}
        Joined::Unknown => {
            return Err(FanoutError::Unavailable(
                "cannot place the room yet; try again".into(),
            ));
        }
        Joined::TooOld { oldest_kept } => {
            return Ok(Json(json!({
                "events": [],
                "next_since_seq": since,
                "resync": format!("the gap is older than this node keeps (oldest kept seq {oldest_kept}); page history, then poll with the last seq you have"),
            })));
        }
        Joined::Ahead { head } => {
            return Err(FanoutError::Invalid(format!(
                "since_seq {since} is past the room's last event ({head})"
            )));
        }
        Joined::Refused(verdict) => {
            crate::access::allowed(verdict)?;
            return Err(FanoutError::NotFound);
        }
    }
    // The greeting (empty) comes first.
    let _ = rx.recv().await;
    let mut frames = Vec::new();
    while let Ok(frame) = rx.try_recv() {
        frames.push(frame);
    }
    if frames.is_empty() {
        let wait = tokio::time::sleep(Duration::from_millis(wait_ms));
        tokio::select! {
            _ = wait => {}
            _ = node.stop.cancelled() => {}
            frame = rx.recv() => {
                frames.extend(frame);
                tokio::time::sleep(LINGER).await;
                while let Ok(frame) = rx.try_recv() {
                    frames.push(frame);
                }
            }
        }
    }
    node.hub.leave(room_id, outlet.id);
    let mut events = Vec::with_capacity(frames.len());
    let mut next = since;
    for frame in frames.iter().take(MAX_EVENTS) {
        let Ok(event) = serde_json::from_str::<Value>(frame) else {
            continue;
        };
        match event["type"].as_str() {
            Some("event") => {}
            // The node's position for the room was replaced: the client pages history.
            Some("resync") => {
                return Ok(Json(json!({
                    "events": events,
                    "next_since_seq": next,
                    "resync": event["reason"],
                })));
            }
            // Access revoked: the next poll gets the refusal.
            _ => break,
        }
        next = event["seq"].as_i64().unwrap_or(next);
        events.push(event);
    }
    node.metrics.polls.inc();
    Ok(Json(json!({"events": events, "next_since_seq": next})))
}
