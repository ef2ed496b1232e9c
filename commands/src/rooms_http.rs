//! HTTP handlers of the room and message commands: authenticate, validate, hand the command to
//! its room's writer (here or, forwarded, on the owning instance) and answer once the broker
//! has acknowledged the events.

use axum::body::Body;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use platform::json::Json;
use schemas::events::{AttachmentUploaded, Role, Visibility};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::CommandError;
use crate::rooms::{Actor, Command, validate};
use crate::writer::Route;

/// Marks a request one instance forwarded to another; it is never forwarded again.
const FORWARDED: &str = "x-chat-forwarded";

/// What every handler passes along, for the case the room lives elsewhere.
struct Request<'a> {
    app: &'a AppState,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Option<serde_json::Value>,
}

impl Request<'_> {
    fn forwarded(&self) -> bool {
        self.headers.contains_key(FORWARDED)
    }

    async fn actor(&self) -> Result<Actor, CommandError> {
        let claims = self.app.authenticate(&self.headers).await?;
        Ok(Actor {
            user_id: claims.sub,
            username: claims.name,
        })
    }

    /// Runs the command on the room's writer and answers `success` with its outcome.
    async fn run(
        self,
        room_id: String,
        actor: Actor,
        command: Command,
        success: StatusCode,
    ) -> Result<Response, CommandError> {
        match self.app.writer.execute(room_id, actor, command).await {
            Ok(result) => Ok((success, axum::Json(result?)).into_response()),
            Err(Route::Forward(owner)) => {
                if self.forwarded() {
                    return Err(CommandError::Unavailable(
                        "room ownership is moving; retry".into(),
                    ));
                }
                self.forward(&owner).await
            }
        }
    }

    async fn forward(self, owner: &str) -> Result<Response, CommandError> {
        let path = self
            .uri
            .0
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut request = self
            .app
            .http
            .request(self.method, format!("{owner}{path}"))
            .header(FORWARDED, "1");
        for name in [
            axum::http::header::AUTHORIZATION,
            axum::http::header::USER_AGENT,
        ] {
            if let Some(value) = self.headers.get(&name) {
                request = request.header(name, value);
            }
        }
        if let Some(body) = &self.body {
            request = request.json(body);
        }
        let upstream = request.send().await.map_err(|e| {
            CommandError::Unavailable(format!("the room's writer at {owner} is unreachable: {e}"))
        })?;
        let status = upstream.status();
        let mut response = Response::builder().status(status.as_u16());
        for name in [
            axum::http::header::CONTENT_TYPE,
            axum::http::header::RETRY_AFTER,
        ] {
            if let Some(value) = upstream
                .headers()
                .get(name.as_str())
                .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
            {
                response = response.header(name, value);
            }
        }
        let bytes = upstream.bytes().await.map_err(|e| {
            CommandError::Unavailable(format!("the room's writer at {owner} broke off: {e}"))
        })?;
        response
            .body(Body::from(bytes))
            .map_err(|e| CommandError::Internal(e.to_string()))
    }
}

fn room_path_id(raw: &str) -> Result<String, CommandError> {
    validate::id(raw, "room_id")
}

#[derive(Serialize, Deserialize)]
pub struct CreateRoomRequest {
    name: String,
    visibility: Visibility,
    #[serde(default)]
    topic: Option<String>,
}

pub async fn create_room(
    State(app): State<AppState>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    Json(body): Json<CreateRoomRequest>,
) -> Result<Response, CommandError> {
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: serde_json::to_value(&body).ok(),
    };
    let actor = request.actor().await?;
    let command = Command::CreateRoom {
        name: validate::room_name(&body.name)?,
        visibility: body.visibility,
        topic: validate::optional_text(body.topic.as_deref(), "topic", validate::MAX_TOPIC_CHARS)?,
    };
    let room_id = app.writer.new_room_id();
    request
        .run(room_id, actor, command, StatusCode::CREATED)
        .await
}

#[derive(Serialize, Deserialize)]
pub struct UpdateRoomRequest {
    #[serde(default)]
    name: Option<String>,
    /// An empty string clears the topic.
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    visibility: Option<Visibility>,
}

pub async fn update_room(
    State(app): State<AppState>,
    Path(room_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    Json(body): Json<UpdateRoomRequest>,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: serde_json::to_value(&body).ok(),
    };
    let actor = request.actor().await?;
    let command = Command::UpdateRoom {
        name: body.name.as_deref().map(validate::room_name).transpose()?,
        topic: match body.topic.as_deref() {
            None => None,
            Some(t) => Some(validate::optional_text(
                Some(t),
                "topic",
                validate::MAX_TOPIC_CHARS,
            )?),
        },
        visibility: body.visibility,
    };
    request.run(room_id, actor, command, StatusCode::OK).await
}

pub async fn join(
    State(app): State<AppState>,
    Path(room_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: None,
    };
    let actor = request.actor().await?;
    request
        .run(room_id, actor, Command::Join, StatusCode::OK)
        .await
}

pub async fn leave(
    State(app): State<AppState>,
    Path(room_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: None,
    };
    let actor = request.actor().await?;
    request
        .run(room_id, actor, Command::Leave, StatusCode::OK)
        .await
}

#[derive(Serialize, Deserialize)]
pub struct InviteRequest {
    user_id: String,
}

/// The target of an invite, ban or role change must be a registered user.
async fn existing_user(app: &AppState, raw: &str) -> Result<String, CommandError> {
    let id = validate::id(raw, "user_id")?;
    let uuid = uuid::Uuid::parse_str(&id)
        .map_err(|_| CommandError::invalid("user_id is not a valid id"))?;
    app.store
        .user(uuid)
        .await?
        .ok_or(CommandError::NotFound("user"))?;
    Ok(id)
}

pub async fn invite(
    State(app): State<AppState>,
    Path(room_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    Json(body): Json<InviteRequest>,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: serde_json::to_value(&body).ok(),
    };
    let actor = request.actor().await?;
    let user_id = existing_user(&app, &body.user_id).await?;
    request
        .run(
            room_id,
            actor,
            Command::Invite { user_id },
            StatusCode::CREATED,
        )
        .await
}

#[derive(Serialize, Deserialize)]
pub struct BanRequest {
    user_id: String,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn ban(
    State(app): State<AppState>,
    Path(room_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    Json(body): Json<BanRequest>,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: serde_json::to_value(&body).ok(),
    };
    let actor = request.actor().await?;
    let user_id = existing_user(&app, &body.user_id).await?;
    let reason =
        validate::optional_text(body.reason.as_deref(), "reason", validate::MAX_REASON_CHARS)?;
    request
        .run(
            room_id,
            actor,
            Command::Ban { user_id, reason },
            StatusCode::CREATED,
        )
        .await
}

#[derive(Serialize, Deserialize)]
pub struct RoleRequest {
    role: Role,
}

pub async fn set_role(
    State(app): State<AppState>,
    Path((room_id, user_id)): Path<(String, String)>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    Json(body): Json<RoleRequest>,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: serde_json::to_value(&body).ok(),
    };
    let actor = request.actor().await?;
    let user_id = validate::id(&user_id, "user_id")?;
    request
        .run(
            room_id,
            actor,
            Command::SetRole {
                user_id,
                role: body.role,
            },
            StatusCode::OK,
        )
        .await
}

#[derive(Serialize, Deserialize)]
pub struct PostRequest {
    client_msg_id: String,
    content: String,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    attachments: Vec<String>,
}

pub async fn post_message(
    State(app): State<AppState>,
    Path(room_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    Json(body): Json<PostRequest>,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: serde_json::to_value(&body).ok(),
    };
    let actor = request.actor().await?;
    if !request.forwarded() {
        app.limiter
            .check(&actor.user_id)
            .map_err(|retry_after| CommandError::RateLimited { retry_after })?;
    }
    let client_msg_id = validate::client_msg_id(&body.client_msg_id)?;
    let content = validate::content(&body.content)?;
    let reply_to = body
        .reply_to
        .as_deref()
        .map(|r| validate::id(r, "reply_to"))
        .transpose()?;
    let attachments = crate::files::resolve_attachments(&app, &actor.user_id, &body.attachments)
        .await?
        .into_iter()
        .map(|f| AttachmentUploaded {
            // The writer fills in the envelope (room, seq) when it decides the post.
            envelope: schemas::Envelope::for_room(room_id.clone(), 1, Some(actor.user_id.clone())),
            file_id: f.file_id,
            uploader_id: actor.user_id.clone(),
            filename: f.filename,
            size: f.size,
            mime_type: f.mime_type,
            sha256: f.sha256,
            url: f.url,
        })
        .collect();
    let command = Command::Post {
        client_msg_id,
        content,
        reply_to,
        attachments,
    };
    request
        .run(room_id, actor, command, StatusCode::CREATED)
        .await
}

#[derive(Serialize, Deserialize)]
pub struct EditRequest {
    content: String,
}

pub async fn edit_message(
    State(app): State<AppState>,
    Path((room_id, message_id)): Path<(String, String)>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    Json(body): Json<EditRequest>,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: serde_json::to_value(&body).ok(),
    };
    let actor = request.actor().await?;
    let message_id = validate::id(&message_id, "message_id")?;
    let content = validate::content(&body.content)?;
    request
        .run(
            room_id,
            actor,
            Command::Edit {
                message_id,
                content,
            },
            StatusCode::OK,
        )
        .await
}

pub async fn delete_message(
    State(app): State<AppState>,
    Path((room_id, message_id)): Path<(String, String)>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: None,
    };
    let actor = request.actor().await?;
    let message_id = validate::id(&message_id, "message_id")?;
    request
        .run(
            room_id,
            actor,
            Command::Delete { message_id },
            StatusCode::OK,
        )
        .await
}

pub async fn react(
    State(app): State<AppState>,
    Path((room_id, message_id, emoji)): Path<(String, String, String)>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: None,
    };
    let actor = request.actor().await?;
    let message_id = validate::id(&message_id, "message_id")?;
    let emoji = validate::emoji(&emoji)?;
    request
        .run(
            room_id,
            actor,
            Command::React { message_id, emoji },
            StatusCode::OK,
        )
        .await
}

pub async fn unreact(
    State(app): State<AppState>,
    Path((room_id, message_id, emoji)): Path<(String, String, String)>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: None,
    };
    let actor = request.actor().await?;
    let message_id = validate::id(&message_id, "message_id")?;
    let emoji = validate::emoji(&emoji)?;
    request
        .run(
            room_id,
            actor,
            Command::Unreact { message_id, emoji },
            StatusCode::OK,
        )
        .await
}

#[derive(Serialize, Deserialize)]
pub struct ReadRequest {
    seq: i64,
}

pub async fn mark_read(
    State(app): State<AppState>,
    Path(room_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    Json(body): Json<ReadRequest>,
) -> Result<Response, CommandError> {
    let room_id = room_path_id(&room_id)?;
    let request = Request {
        app: &app,
        method,
        uri,
        headers,
        body: serde_json::to_value(&body).ok(),
    };
    let actor = request.actor().await?;
    request
        .run(
            room_id,
            actor,
            Command::MarkRead { seq: body.seq },
            StatusCode::OK,
        )
        .await
}
