//! HTTP handlers of the room and message commands: validate, hand the command to its room's
//! writer and answer once the broker has acknowledged the events. The caller is verified by the
//! `Caller` extractor, and a room written by another instance is the forwarding layer's
//! (`crate::forward`) business.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::auth::{AccessClaims, Caller};
use schemas::events::{Role, Visibility};
use serde::Deserialize;
use uuid::Uuid;

use crate::app::AppState;
use crate::body::{Body, Valid};
use crate::error::CommandError;
use crate::rooms::{Actor, Command, Outcome, validate};

/// Runs `command` on the room's writer and answers `success` with its outcome.
pub(crate) async fn run(
    app: &AppState,
    room_id: String,
    caller: AccessClaims,
    command: Command,
    success: StatusCode,
) -> Result<Response, CommandError> {
    let actor = Actor {
        user_id: caller.sub,
        username: caller.name,
    };
    let outcome = app.writer.execute(room_id, actor, command).await?;
    Ok((success, axum::Json(outcome)).into_response())
}

pub(crate) fn room_path_id(raw: &str) -> Result<String, CommandError> {
    validate::id(raw, "room_id")
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateRoomRequest {
    name: String,
    visibility: Visibility,
    #[serde(default)]
    topic: Option<String>,
}

impl Body for CreateRoomRequest {
    type Valid = Command;
    fn validated(self) -> Result<Command, CommandError> {
        Ok(Command::CreateRoom {
            name: validate::room_name(&self.name)?,
            visibility: self.visibility,
            topic: validate::optional_text(
                self.topic.as_deref(),
                "topic",
                validate::MAX_TOPIC_CHARS,
            )?,
        })
    }
}

#[utoipa::path(
    post,
    path = "/v1/rooms",
    tag = "rooms",
    summary = "Create a room; the caller owns it",
    request_body = CreateRoomRequest,
    responses((status = 201, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn create_room(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Valid(command): Valid<CreateRoomRequest>,
) -> Result<Response, CommandError> {
    app.limits.rooms.check(&caller.sub)?;
    let room_id = app.writer.new_room_id();
    run(&app, room_id, caller, command, StatusCode::CREATED).await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct UpdateRoomRequest {
    #[serde(default)]
    name: Option<String>,
    /// An empty string clears the topic.
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    visibility: Option<Visibility>,
}

impl Body for UpdateRoomRequest {
    type Valid = Command;
    fn validated(self) -> Result<Command, CommandError> {
        Ok(Command::UpdateRoom {
            name: self.name.as_deref().map(validate::room_name).transpose()?,
            topic: self
                .topic
                .as_deref()
                .map(|t| validate::optional_text(Some(t), "topic", validate::MAX_TOPIC_CHARS))
                .transpose()?,
            visibility: self.visibility,
        })
    }
}

#[utoipa::path(
    patch,
    path = "/v1/rooms/{room_id}",
    tag = "rooms",
    summary = "Change name, topic or visibility (owner, moderators)",
    params(("room_id" = String, Path, description = "the room")),
    request_body = UpdateRoomRequest,
    responses((status = 200, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn update_room(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(room_id): Path<String>,
    Valid(command): Valid<UpdateRoomRequest>,
) -> Result<Response, CommandError> {
    app.limits.rooms.check(&caller.sub)?;
    let room_id = room_path_id(&room_id)?;
    run(&app, room_id, caller, command, StatusCode::OK).await
}

#[utoipa::path(
    post,
    path = "/v1/rooms/{room_id}/join",
    tag = "rooms",
    summary = "Join a public room, or a private one the caller is invited to",
    params(("room_id" = String, Path, description = "the room")),
    responses((status = 200, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn join(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(room_id): Path<String>,
) -> Result<Response, CommandError> {
    app.limits.membership.check(&caller.sub)?;
    let room_id = room_path_id(&room_id)?;
    run(&app, room_id, caller, Command::Join, StatusCode::OK).await
}

#[utoipa::path(
    post,
    path = "/v1/rooms/{room_id}/leave",
    tag = "rooms",
    summary = "Leave a room",
    params(("room_id" = String, Path, description = "the room")),
    responses((status = 200, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn leave(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(room_id): Path<String>,
) -> Result<Response, CommandError> {
    app.limits.membership.check(&caller.sub)?;
    let room_id = room_path_id(&room_id)?;
    run(&app, room_id, caller, Command::Leave, StatusCode::OK).await
}

/// Who to invite: by id, or by username (what people know each other by); exactly one.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct InviteRequest {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

pub enum Invitee {
    Id(Uuid),
    Username(String),
}

impl Body for InviteRequest {
    type Valid = Invitee;
    fn validated(self) -> Result<Invitee, CommandError> {
        match (self.user_id, self.username) {
            (Some(id), None) => Ok(Invitee::Id(user_id(&id)?)),
            (None, Some(name)) => Ok(Invitee::Username(crate::identity::validate::username(
                &name,
            )?)),
            _ => Err(CommandError::invalid(
                "give the invitee's user_id or username (one of them)",
            )),
        }
    }
}

fn user_id(raw: &str) -> Result<Uuid, CommandError> {
    Uuid::parse_str(&validate::id(raw, "user_id")?)
        .map_err(|_| CommandError::invalid("user_id is not a valid id"))
}

/// The target of an invite or ban must be a registered user.
async fn existing_user(app: &AppState, id: Uuid) -> Result<String, CommandError> {
    app.store
        .user(id)
        .await?
        .ok_or(CommandError::NotFound("user"))?;
    Ok(id.to_string())
}

#[utoipa::path(
    post,
    path = "/v1/rooms/{room_id}/invites",
    tag = "rooms",
    summary = "Invite a user by user_id or username (members of public rooms; owner and moderators of private ones)",
    params(("room_id" = String, Path, description = "the room")),
    request_body = InviteRequest,
    responses((status = 201, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn invite(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(room_id): Path<String>,
    Valid(invitee): Valid<InviteRequest>,
) -> Result<Response, CommandError> {
    app.limits.membership.check(&caller.sub)?;
    let room_id = room_path_id(&room_id)?;
    let user_id = match invitee {
        Invitee::Id(id) => existing_user(&app, id).await?,
        Invitee::Username(name) => app
            .store
            .user_named(&name)
            .await?
            .ok_or(CommandError::NotFound("user"))?
            .to_string(),
    };
    run(
        &app,
        room_id,
        caller,
        Command::Invite { user_id },
        StatusCode::CREATED,
    )
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct BanRequest {
    user_id: String,
    #[serde(default)]
    reason: Option<String>,
}

impl Body for BanRequest {
    type Valid = (Uuid, Option<String>);
    fn validated(self) -> Result<Self::Valid, CommandError> {
        Ok((
            user_id(&self.user_id)?,
            validate::optional_text(self.reason.as_deref(), "reason", validate::MAX_REASON_CHARS)?,
        ))
    }
}

#[utoipa::path(
    post,
    path = "/v1/rooms/{room_id}/bans",
    tag = "rooms",
    summary = "Ban a member (owner, moderators)",
    params(("room_id" = String, Path, description = "the room")),
    request_body = BanRequest,
    responses((status = 201, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn ban(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(room_id): Path<String>,
    Valid((user_id, reason)): Valid<BanRequest>,
) -> Result<Response, CommandError> {
    app.limits.membership.check(&caller.sub)?;
    let room_id = room_path_id(&room_id)?;
    let user_id = existing_user(&app, user_id).await?;
    run(
        &app,
        room_id,
        caller,
        Command::Ban { user_id, reason },
        StatusCode::CREATED,
    )
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RoleRequest {
    role: Role,
}

impl Body for RoleRequest {
    type Valid = Role;
    fn validated(self) -> Result<Role, CommandError> {
        Ok(self.role)
    }
}

#[utoipa::path(
    put,
    path = "/v1/rooms/{room_id}/members/{user_id}/role",
    tag = "rooms",
    summary = "Change a member's role (owner)",
    params(("room_id" = String, Path, description = "the room"), ("user_id" = String, Path, description = "the member")),
    request_body = RoleRequest,
    responses((status = 200, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn set_role(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((room_id, user_id)): Path<(String, String)>,
    Valid(role): Valid<RoleRequest>,
) -> Result<Response, CommandError> {
    app.limits.membership.check(&caller.sub)?;
    let room_id = room_path_id(&room_id)?;
    let user_id = validate::id(&user_id, "user_id")?;
    run(
        &app,
        room_id,
        caller,
        Command::SetRole { user_id, role },
        StatusCode::OK,
    )
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct PostRequest {
    client_msg_id: String,
    content: String,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    attachments: Vec<String>,
}

/// A post as checked from its body alone; its attachments are still to be found.
pub struct ValidPost {
    client_msg_id: String,
    content: String,
    reply_to: Option<String>,
    attachments: Vec<Uuid>,
}

impl Body for PostRequest {
    type Valid = ValidPost;
    fn validated(self) -> Result<ValidPost, CommandError> {
        Ok(ValidPost {
            client_msg_id: validate::client_msg_id(&self.client_msg_id)?,
            content: validate::content(&self.content)?,
            reply_to: self
                .reply_to
                .as_deref()
                .map(|r| validate::id(r, "reply_to"))
                .transpose()?,
            attachments: crate::files::attachment_ids(&self.attachments)?,
        })
    }
}

#[utoipa::path(
    post,
    path = "/v1/rooms/{room_id}/messages",
    tag = "rooms",
    summary = "Post a message; a retry with the same client_msg_id gets the first answer",
    params(("room_id" = String, Path, description = "the room")),
    request_body = PostRequest,
    responses((status = 201, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn post_message(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(room_id): Path<String>,
    Valid(post): Valid<PostRequest>,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    app.limits.posts.check(&caller.sub)?;
    let attachments =
        crate::files::resolve_attachments(&app, &caller.sub, &post.attachments).await?;
    let command = Command::Post {
        client_msg_id: post.client_msg_id,
        content: post.content,
        reply_to: post.reply_to,
        attachments,
    };
    run(&app, room_id, caller, command, StatusCode::CREATED).await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct EditRequest {
    content: String,
}

impl Body for EditRequest {
    type Valid = String;
    fn validated(self) -> Result<String, CommandError> {
        validate::content(&self.content)
    }
}

#[utoipa::path(
    patch,
    path = "/v1/rooms/{room_id}/messages/{message_id}",
    tag = "rooms",
    summary = "Edit a message (its author)",
    params(("room_id" = String, Path, description = "the room"), ("message_id" = String, Path, description = "the message")),
    request_body = EditRequest,
    responses((status = 200, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn edit_message(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((room_id, message_id)): Path<(String, String)>,
    Valid(content): Valid<EditRequest>,
) -> Result<Response, CommandError> {
    app.limits.edits.check(&caller.sub)?;
    let room_id = room_path_id(&room_id)?;
    let message_id = validate::id(&message_id, "message_id")?;
    run(
        &app,
        room_id,
        caller,
        Command::Edit {
            message_id,
            content,
        },
        StatusCode::OK,
    )
    .await
}

#[utoipa::path(
    delete,
    path = "/v1/rooms/{room_id}/messages/{message_id}",
    tag = "rooms",
    summary = "Delete a message (its author, moderators, the owner)",
    params(("room_id" = String, Path, description = "the room"), ("message_id" = String, Path, description = "the message")),
    responses((status = 200, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn delete_message(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((room_id, message_id)): Path<(String, String)>,
) -> Result<Response, CommandError> {
    app.limits.edits.check(&caller.sub)?;
    let room_id = room_path_id(&room_id)?;
    let message_id = validate::id(&message_id, "message_id")?;
    run(
        &app,
        room_id,
        caller,
        Command::Delete { message_id },
        StatusCode::OK,
    )
    .await
}

#[utoipa::path(
    put,
    path = "/v1/rooms/{room_id}/messages/{message_id}/reactions/{emoji}",
    tag = "rooms",
    summary = "Add a reaction (idempotent)",
    params(("room_id" = String, Path, description = "the room"), ("message_id" = String, Path, description = "the message"), ("emoji" = String, Path, description = "a single emoji or a :shortcode:")),
    responses((status = 200, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn react(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((room_id, message_id, emoji)): Path<(String, String, String)>,
) -> Result<Response, CommandError> {
    app.limits.reactions.check(&caller.sub)?;
    let room_id = room_path_id(&room_id)?;
    let message_id = validate::id(&message_id, "message_id")?;
    let emoji = validate::emoji(&emoji)?;
    run(
        &app,
        room_id,
        caller,
        Command::React { message_id, emoji },
        StatusCode::OK,
    )
    .await
}

#[utoipa::path(
    delete,
    path = "/v1/rooms/{room_id}/messages/{message_id}/reactions/{emoji}",
    tag = "rooms",
    summary = "Remove a reaction",
    params(("room_id" = String, Path, description = "the room"), ("message_id" = String, Path, description = "the message"), ("emoji" = String, Path, description = "a single emoji or a :shortcode:")),
    responses((status = 200, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn unreact(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((room_id, message_id, emoji)): Path<(String, String, String)>,
) -> Result<Response, CommandError> {
    app.limits.reactions.check(&caller.sub)?;
    let room_id = room_path_id(&room_id)?;
    let message_id = validate::id(&message_id, "message_id")?;
    let emoji = validate::emoji(&emoji)?;
    run(
        &app,
        room_id,
        caller,
        Command::Unreact { message_id, emoji },
        StatusCode::OK,
    )
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ReadRequest {
    seq: i64,
}

impl Body for ReadRequest {
    type Valid = i64;
    fn validated(self) -> Result<i64, CommandError> {
        if self.seq < 0 {
            return Err(CommandError::invalid("seq must be 0 or more"));
        }
        Ok(self.seq)
    }
}

#[utoipa::path(
    post,
    path = "/v1/rooms/{room_id}/read",
    tag = "rooms",
    summary = "Move the caller's read marker",
    params(("room_id" = String, Path, description = "the room")),
    request_body = ReadRequest,
    responses((status = 200, description = "written; the seq and event id of the last event", body = Outcome), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn mark_read(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path(room_id): Path<String>,
    Valid(seq): Valid<ReadRequest>,
) -> Result<Response, CommandError> {
    app.limits.read_markers.check(&caller.sub)?;
    let room_id = room_path_id(&room_id)?;
    run(
        &app,
        room_id,
        caller,
        Command::MarkRead { seq },
        StatusCode::OK,
    )
    .await
}
