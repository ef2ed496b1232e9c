//! HTTP handlers of the call commands (API.md "Calls"). Calls are room events, so these go to
//! the room's writer like every room command; the socket's `call.*` frames are these same
//! requests made by the fan-out node with the caller's token.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use platform::auth::{AccessClaims, Caller};
use schemas::events::CallMedia;
use serde::Deserialize;

use crate::app::AppState;
use crate::body::{Body, Valid};
use crate::error::CommandError;
use crate::rooms::{Actor, Command, LeaveReason, Outcome, validate};
use crate::rooms_http::{room_path_id, run};

#[derive(Deserialize, utoipa::ToSchema)]
pub struct StartCallRequest {
    /// What the caller's side sends; participants choose their own devices when they join.
    #[serde(default = "video")]
    media: CallMedia,
}

fn video() -> CallMedia {
    CallMedia::Video
}

impl Body for StartCallRequest {
    type Valid = CallMedia;
    fn validated(self) -> Result<CallMedia, CommandError> {
        Ok(self.media)
    }
}

#[utoipa::path(
    post,
    path = "/v1/rooms/{room_id}/calls",
    tag = "calls",
    summary = "Start the room's call (members); it rings the other members until one joins or the ring timeout",
    params(("room_id" = String, Path, description = "the room")),
    request_body = StartCallRequest,
    responses((status = 201, description = "written; `call_id` names the call", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn start(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(room_id): Path<String>,
    Valid(media): Valid<StartCallRequest>,
) -> Result<Response, CommandError> {
    app.limits.calls.check(&caller.sub)?;
    let room_id = room_path_id(&room_id)?;
    run(
        &app,
        room_id,
        caller,
        Command::StartCall { media },
        StatusCode::CREATED,
    )
    .await
}

/// Runs the call command `command(call_id)` of the path `(room_id, call_id)` on the room's
/// writer, within the caller's call budget.
async fn on_call(
    app: &AppState,
    caller: AccessClaims,
    (room_id, call_id): (String, String),
    command: impl FnOnce(String) -> Command,
) -> Result<Response, CommandError> {
    app.limits.calls.check(&caller.sub)?;
    let (room_id, call_id) = call_path(&room_id, &call_id)?;
    run(app, room_id, caller, command(call_id), StatusCode::OK).await
}

/// The `{room_id}` and `{call_id}` of a call path, checked.
fn call_path(room_id: &str, call_id: &str) -> Result<(String, String), CommandError> {
    Ok((room_path_id(room_id)?, validate::id(call_id, "call_id")?))
}

#[utoipa::path(
    post,
    path = "/v1/rooms/{room_id}/calls/{call_id}/join",
    tag = "calls",
    summary = "Join the room's call (members)",
    params(("room_id" = String, Path, description = "the room"), ("call_id" = String, Path, description = "the call")),
    responses((status = 200, description = "written (nothing when already in it)", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn join(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(path): Path<(String, String)>,
) -> Result<Response, CommandError> {
    on_call(&app, caller, path, |call_id| Command::JoinCall { call_id }).await
}

#[utoipa::path(
    post,
    path = "/v1/rooms/{room_id}/calls/{call_id}/leave",
    tag = "calls",
    summary = "Hang up: leave the call (the last one leaving ends it)",
    params(("room_id" = String, Path, description = "the room"), ("call_id" = String, Path, description = "the call")),
    responses((status = 200, description = "written (nothing when not in it)", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn leave(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(path): Path<(String, String)>,
) -> Result<Response, CommandError> {
    on_call(&app, caller, path, |call_id| Command::LeaveCall {
        call_id,
        reason: LeaveReason::HungUp,
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct DeclineRequest {
    /// The member is in another call (clients decline with `busy` on their own).
    #[serde(default)]
    busy: bool,
}

impl Body for DeclineRequest {
    type Valid = bool;
    fn validated(self) -> Result<bool, CommandError> {
        Ok(self.busy)
    }
}

#[utoipa::path(
    post,
    path = "/v1/rooms/{room_id}/calls/{call_id}/decline",
    tag = "calls",
    summary = "Decline a ringing call (members not in it); when every other member declined, it ends",
    params(("room_id" = String, Path, description = "the room"), ("call_id" = String, Path, description = "the call")),
    request_body = DeclineRequest,
    responses((status = 200, description = "written (nothing once answered or declined)", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn decline(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(path): Path<(String, String)>,
    Valid(busy): Valid<DeclineRequest>,
) -> Result<Response, CommandError> {
    on_call(&app, caller, path, |call_id| Command::DeclineCall {
        call_id,
        busy,
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/rooms/{room_id}/calls/{call_id}/end",
    tag = "calls",
    summary = "End the call for everyone (its caller, moderators, the owner)",
    params(("room_id" = String, Path, description = "the room"), ("call_id" = String, Path, description = "the call")),
    responses((status = 200, description = "written", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn end(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(path): Path<(String, String)>,
) -> Result<Response, CommandError> {
    on_call(&app, caller, path, |call_id| Command::EndCall { call_id }).await
}

#[derive(Deserialize)]
pub struct DropRequest {
    user_id: String,
}

impl Body for DropRequest {
    type Valid = String;
    fn validated(self) -> Result<String, CommandError> {
        validate::id(&self.user_id, "user_id")
    }
}

/// Internal (`platform::internal`, not routed by nginx, not in the OpenAPI document): the
/// signaling tier takes a participant whose sockets all dropped out of the call, as `CallLeft`
/// with reason `disconnected` (and `CallEnded` `disconnected` if nobody is left).
pub async fn drop_disconnected(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((room_id, call_id)): Path<(String, String)>,
    Valid(user_id): Valid<DropRequest>,
) -> Result<Response, CommandError> {
    if !app.internal.as_ref().is_some_and(|s| s.admits(&headers)) {
        return Err(CommandError::Auth(platform::auth::AuthError::Invalid));
    }
    let (room_id, call_id) = call_path(&room_id, &call_id)?;
    let actor = Actor {
        user_id,
        username: String::new(),
    };
    let command = Command::LeaveCall {
        call_id,
        reason: LeaveReason::Disconnected,
    };
    let outcome = app.writer.execute(room_id, actor, command).await?;
    Ok((StatusCode::OK, axum::Json(outcome)).into_response())
}
