//! `GET /v1/openapi.json`: the public HTTP interface of every tier behind the entry point, as
//! OpenAPI 3.0. Served by the read tier; kept next to the routes it describes, and a test
//! checks that every route answers as documented.

use axum::Json;
use serde_json::{Value, json};

fn error_ref() -> Value {
    json!({"$ref": "#/components/responses/Error"})
}

/// One operation: summary, whether it needs a token, path/query parameters, request body schema.
fn op(
    summary: &str,
    auth: bool,
    params: &[(&str, &str, &str)],
    body: Option<Value>,
    ok: (&str, &str),
) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|(name, place, kind)| {
            json!({"name": name, "in": place, "required": *place == "path", "schema": {"type": kind}})
        })
        .collect();
    let mut o = json!({
        "summary": summary,
        "parameters": parameters,
        "responses": {
            ok.0: {"description": ok.1},
            "400": error_ref(), "401": error_ref(), "403": error_ref(), "404": error_ref(),
            "429": error_ref(), "503": error_ref(),
        },
    });
    if auth {
        o["security"] = json!([{"bearer": []}]);
    }
    if let Some(schema) = body {
        o["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    o
}

fn obj(props: &[(&str, &str)], required: &[&str]) -> Value {
    let properties: serde_json::Map<String, Value> = props
        .iter()
        .map(|(k, t)| (k.to_string(), json!({"type": t})))
        .collect();
    json!({"type": "object", "properties": properties, "required": required})
}

pub fn spec() -> Value {
    let room = ("room_id", "path", "string");
    let message = ("message_id", "path", "string");
    json!({
        "openapi": "3.0.3",
        "info": {"title": "chat-platform", "version": "1", "description": "Real-time chat: HTTP interface. The socket protocol is described in API.md."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {"Error": {"description": "error", "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}, "required": ["code", "message"]}},
                "required": ["error"],
            }}}}},
        },
        "paths": {
            "/v1/auth/register": {"post": op("Create an account", false, &[], Some(obj(&[("email", "string"), ("username", "string"), ("password", "string")], &["email", "username", "password"])), ("201", "{user_id, username}"))},
            "/v1/auth/login": {"post": op("Log in with username or e-mail", false, &[], Some(obj(&[("login", "string"), ("password", "string")], &["login", "password"])), ("200", "{access_token, refresh_token, expires_in, user_id}"))},
            "/v1/auth/refresh": {"post": op("Rotate the refresh token", false, &[], Some(obj(&[("refresh_token", "string")], &["refresh_token"])), ("200", "a new token pair"))},
            "/v1/auth/logout": {"post": op("End this session", true, &[], None, ("204", "logged out"))},
            "/v1/auth/jwks": {"get": op("Public keys of access tokens", false, &[], None, ("200", "JWK set"))},
            "/v1/users/me": {"get": op("The caller's account", true, &[], None, ("200", "{user_id, username, email}"))},
            "/v1/files": {"post": {"summary": "Upload a file (multipart field `file`, 25 MiB)", "security": [{"bearer": []}],
                "requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}}}},
                "responses": {"201": {"description": "{file_id, filename, size, mime_type, sha256, url}"}, "400": error_ref(), "401": error_ref(), "413": error_ref()}}},
            "/v1/files/{file_id}": {"get": op("Download a file shared in one of the caller's rooms", true, &[("file_id", "path", "string")], None, ("200", "the bytes"))},
            "/v1/rooms": {
                "get": op("Rooms: joined (default) or public", true, &[("scope", "query", "string"), ("limit", "query", "integer")], None, ("200", "[room]")),
                "post": op("Create a room", true, &[], Some(obj(&[("name", "string"), ("visibility", "string"), ("topic", "string")], &["name", "visibility"])), ("201", "{room_id, seq, event_id}")),
            },
            "/v1/rooms/{room_id}": {
                "get": op("Room detail", true, &[room], None, ("200", "room")),
                "patch": op("Change name, topic or visibility", true, &[room], Some(obj(&[("name", "string"), ("topic", "string"), ("visibility", "string")], &[])), ("200", "{room_id, seq, event_id}")),
            },
            "/v1/rooms/{room_id}/join": {"post": op("Join", true, &[room], None, ("200", "{room_id, seq, event_id}"))},
            "/v1/rooms/{room_id}/leave": {"post": op("Leave", true, &[room], None, ("200", "{room_id, seq, event_id}"))},
            "/v1/rooms/{room_id}/invites": {"post": op("Invite to a private room", true, &[room], Some(obj(&[("user_id", "string")], &["user_id"])), ("201", "{room_id, seq, event_id}"))},
            "/v1/rooms/{room_id}/bans": {"post": op("Ban", true, &[room], Some(obj(&[("user_id", "string"), ("reason", "string")], &["user_id"])), ("201", "{room_id, seq, event_id}"))},
            "/v1/rooms/{room_id}/members": {"get": op("Members", true, &[room], None, ("200", "[{user_id, username, role, online}]"))},
            "/v1/rooms/{room_id}/members/{user_id}/role": {"put": op("Change a member's role", true, &[room, ("user_id", "path", "string")], Some(obj(&[("role", "string")], &["role"])), ("200", "{room_id, seq, event_id}"))},
            "/v1/rooms/{room_id}/messages": {
                "get": op("History by seq", true, &[room, ("before", "query", "integer"), ("after", "query", "integer"), ("limit", "query", "integer")], None, ("200", "{messages, next_before?, next_after?}")),
                "post": op("Post (idempotent per client_msg_id)", true, &[room], Some(json!({"type": "object", "properties": {"client_msg_id": {"type": "string"}, "content": {"type": "string"}, "reply_to": {"type": "string"}, "attachments": {"type": "array", "items": {"type": "string"}}}, "required": ["client_msg_id", "content"]})), ("201", "{room_id, message_id, seq, event_id}")),
            },
            "/v1/rooms/{room_id}/messages/{message_id}": {
                "patch": op("Edit (author)", true, &[room, message], Some(obj(&[("content", "string")], &["content"])), ("200", "{room_id, message_id, seq, event_id}")),
                "delete": op("Delete (author or moderator)", true, &[room, message], None, ("200", "{room_id, message_id, seq, event_id}")),
            },
            "/v1/rooms/{room_id}/messages/{message_id}/reactions/{emoji}": {
                "put": op("React (idempotent)", true, &[room, message, ("emoji", "path", "string")], None, ("200", "{room_id, message_id, seq, event_id}")),
                "delete": op("Remove a reaction", true, &[room, message, ("emoji", "path", "string")], None, ("200", "{room_id, message_id, seq, event_id}")),
            },
            "/v1/rooms/{room_id}/read": {"post": op("Set the read marker", true, &[room], Some(obj(&[("seq", "integer")], &["seq"])), ("200", "{room_id, seq, event_id}"))},
            "/v1/rooms/{room_id}/presence": {"get": op("Members online", true, &[room], None, ("200", "{online: [user_id]}"))},
            "/v1/search": {"get": op("Search messages in the caller's rooms", true, &[("q", "query", "string"), ("room_id", "query", "string"), ("limit", "query", "integer"), ("before", "query", "string")], None, ("200", "{messages, next_before?}"))},
            "/v1/me/unread": {"get": op("Unread counts per joined room", true, &[], None, ("200", "[{room_id, unread, last_seq, read_seq}]"))},
        },
    })
}

pub async fn document() -> Json<Value> {
    Json(spec())
}
