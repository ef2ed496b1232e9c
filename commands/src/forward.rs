//! Forwarding a room command to the instance that writes its room, as one layer around the
//! room routes.
//!
//! Each room partition has one writer in the whole deployment (`crate::writer`), but a client
//! reaches any instance. The layer looks up the room's owner before anything else runs and, when
//! it is another instance, sends it the request's original bytes and relays its answer: the owner
//! authenticates, validates and rate-limits the request once. When ownership moves between that
//! look-up and the command reaching a writer, the handler's answer carries [`Moved`] and the
//! layer forwards the same bytes then. A request is forwarded at most once: the owner answers
//! one that arrives marked [`FORWARDED`] with 503 if it does not write the room either (the
//! client retries after `Retry-After`). The mark grants nothing else, so a client may set it.

use axum::body::{Body, Bytes};
use axum::extract::{RawPathParams, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::error::CommandError;

/// Marks a request one instance forwarded to another; it is never forwarded again.
pub const FORWARDED: &str = "x-chat-forwarded";

/// On a response: the command must run on the instance at this base URL.
#[derive(Debug, Clone)]
pub struct Moved(pub String);

/// The layer (`axum::middleware::from_fn_with_state`), on routes whose path names `{room_id}`
/// and on room creation.
pub async fn to_owner(
    State(app): State<AppState>,
    params: RawPathParams,
    request: Request,
    next: Next,
) -> Response {
    if request.headers().contains_key(FORWARDED) {
        let mut response = next.run(request).await;
        response.extensions_mut().remove::<Moved>();
        return response;
    }
    let room_id = params
        .iter()
        .find(|(name, _)| *name == "room_id")
        .map(|(_, value)| value.to_string());
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, app.config.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return CommandError::TooLarge(format!(
                "request bodies are limited to {} bytes",
                app.config.max_body_bytes
            ))
            .into_response();
        }
    };
    if let Some(room_id) = room_id
        && let Some(owner) = app.writer.owner_elsewhere(&room_id).await
    {
        return relay(&app, &owner, &parts, bytes)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    let again = (parts.clone(), bytes.clone());
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    match response.extensions().get::<Moved>() {
        Some(Moved(owner)) => relay(&app, owner, &again.0, again.1)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        None => response,
    }
}

/// Sends the request to `owner` and answers with its status, type, `Retry-After` and body.
async fn relay(
    app: &AppState,
    owner: &str,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> Result<Response, CommandError> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut request = app
        .http
        .request(parts.method.clone(), format!("{owner}{path}"))
        .header(FORWARDED, "1")
        .body(body);
    for name in [
        header::AUTHORIZATION,
        header::USER_AGENT,
        header::CONTENT_TYPE,
    ] {
        if let Some(value) = parts.headers.get(&name) {
            request = request.header(name, value);
        }
    }
    let upstream = request.send().await.map_err(|e| {
        CommandError::Unavailable(format!("the room's writer at {owner} is unreachable: {e}"))
    })?;
    // reqwest and axum share the `http` crate: status and header values pass through as they are.
    let mut response = Response::builder().status(upstream.status());
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(value) = upstream.headers().get(&name) {
            response = response.header(name, value.clone());
        }
    }
    let bytes = upstream.bytes().await.map_err(|e| {
        CommandError::Unavailable(format!("the room's writer at {owner} broke off: {e}"))
    })?;
    response
        .body(Body::from(bytes))
        .map_err(|e| CommandError::Internal(e.to_string()))
}
