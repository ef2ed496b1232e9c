//! Rooms, members, presence and unread counts.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use futures::TryStreamExt;
use mongodb::bson::{DateTime, doc};
use mongodb::options::FindOptions;
use platform::auth::Caller;
use read_model::documents::{MembershipDoc, RoomDoc};
use read_model::history::{Start, Walk};
use read_model::{MEMBERSHIPS, ROOMS, membership_id};
use serde_json::{Value, json};
use sqlx::Row;

use crate::access::{Access, invited_rooms, member_rooms, readable_room};
use crate::app::{App, AppState};
use crate::error::QueryError;
use crate::params::Params;

fn millis(t: Option<DateTime>) -> Value {
    t.map_or(Value::Null, |t| json!(t.timestamp_millis()))
}

pub fn room_json(room: &RoomDoc) -> Value {
    json!({
        "room_id": room.room_id,
        "name": room.name,
        "visibility": room.visibility,
        "topic": room.topic,
        "owner_id": room.owner_id,
        "member_count": room.member_count,
        "message_count": room.message_count,
        "last_seq": room.last_seq,
        "created_at": millis(room.created_at),
        "last_activity": millis(room.last_activity),
    })
}

/// `GET /v1/rooms?scope=joined|invited|public&limit=` — the caller's rooms (default), the
/// private rooms it is invited to (what a client offers to join), or public rooms by recent
/// activity.
#[utoipa::path(
    get,
    path = "/v1/rooms",
    tag = "reads",
    summary = "Rooms the caller joined, is invited to, or public rooms",
    params(("scope" = Option<String>, Query, description = "joined (default), invited or public"), ("limit" = Option<i64>, Query, description = "1-200, default 50")),
    responses((status = 200, description = "rooms: room_id, name, visibility, topic, member_count, last_activity, last_seq, role", body = [Object]), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn list(
    State(app): State<AppState>,
    Caller(claims): Caller,
    params: Params,
) -> Result<Json<Value>, QueryError> {
    app.limits.reads.check(&claims.sub)?;
    let limit = params.int("limit", 100, 1..=500)?;
    let rooms = app.db().collection::<RoomDoc>(ROOMS);
    // The scope picks which rooms; every scope lists them by recent activity.
    let filter = match params.get("scope").unwrap_or("joined") {
        "joined" => doc! {"_id": {"$in": member_rooms(&app, &claims.sub).await?}},
        "invited" => doc! {"_id": {"$in": invited_rooms(&app, &claims.sub).await?}},
        "public" => doc! {"visibility": "public"},
        other => {
            return Err(QueryError::invalid(format!(
                "scope must be joined, invited or public, not {other:?}"
            )));
        }
    };
    let docs: Vec<RoomDoc> = rooms
        .find(filter)
        .with_options(
            FindOptions::builder()
                .sort(doc! {"last_activity": -1})
                .limit(limit)
                .build(),
        )
        .await?
        .try_collect()
        .await?;
    Ok(Json(json!(docs.iter().map(room_json).collect::<Vec<_>>())))
}

/// `GET /v1/rooms/{room_id}`
#[utoipa::path(
    get,
    path = "/v1/rooms/{room_id}",
    tag = "reads",
    summary = "Room detail (members; visitors of public rooms)",
    params(("room_id" = String, Path, description = "the room")),
    responses((status = 200, description = "room_id, name, visibility, topic, owner_id, member_count, message_count, last_seq, role", body = Object), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn detail(
    State(app): State<AppState>,
    Caller(claims): Caller,
    Path(room_id): Path<String>,
) -> Result<Json<Value>, QueryError> {
    app.limits.reads.check(&claims.sub)?;
    let (room, access) = readable_room(&app, &room_id, &claims.sub).await?;
    let mut body = room_json(&room);
    body["my_role"] = match access {
        Access::Member(role) => json!(role),
        Access::Visitor => Value::Null,
    };
    Ok(Json(body))
}

/// Members online in a room, from the presence projection in Redis.
pub async fn online(app: &App, room_id: &str) -> Result<Vec<String>, QueryError> {
    let mut members =
        read_model::presence::online_members(&app.redis, &app.presence_prefix(), room_id).await?;
    members.sort();
    Ok(members)
}

/// `GET /v1/rooms/{room_id}/members` — `[{user_id, username, role, online}]`.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room_id}/members",
    tag = "reads",
    summary = "Members of a room",
    params(("room_id" = String, Path, description = "the room")),
    responses((status = 200, description = "user_id, username, role, online", body = [Object]), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn members(
    State(app): State<AppState>,
    Caller(claims): Caller,
    Path(room_id): Path<String>,
) -> Result<Json<Value>, QueryError> {
    app.limits.reads.check(&claims.sub)?;
    readable_room(&app, &room_id, &claims.sub).await?;
    let memberships: Vec<MembershipDoc> = app
        .db()
        .collection::<MembershipDoc>(MEMBERSHIPS)
        .find(doc! {"room_id": &room_id, "status": "member"})
        .await?
        .try_collect()
        .await?;
    let ids: Vec<uuid::Uuid> = memberships
        .iter()
        .filter_map(|m| uuid::Uuid::parse_str(&m.user_id).ok())
        .collect();
    let names: HashMap<String, String> =
        sqlx::query("SELECT user_id::text, username FROM users WHERE user_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&app.directory)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    let online = online(&app, &room_id).await?;
    let mut members: Vec<Value> = memberships
        .iter()
        .map(|m| {
            json!({
                "user_id": m.user_id,
                "username": names.get(&m.user_id),
                "role": m.role,
                "online": online.contains(&m.user_id),
            })
        })
        .collect();
    members.sort_by(|a, b| a["user_id"].as_str().cmp(&b["user_id"].as_str()));
    Ok(Json(json!(members)))
}

/// `GET /v1/rooms/{room_id}/presence` — `{online: [user_id]}`.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room_id}/presence",
    tag = "reads",
    summary = "Members online",
    params(("room_id" = String, Path, description = "the room")),
    responses((status = 200, description = "{online: [user_id]}", body = Object), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn presence(
    State(app): State<AppState>,
    Caller(claims): Caller,
    Path(room_id): Path<String>,
) -> Result<Json<Value>, QueryError> {
    app.limits.reads.check(&claims.sub)?;
    readable_room(&app, &room_id, &claims.sub).await?;
    Ok(Json(json!({"online": online(&app, &room_id).await?})))
}

/// Unread messages are counted up to this many per room.
const UNREAD_CAP: u64 = 1000;

/// `GET /v1/me/unread` — per joined room: messages by others after the read marker.
#[utoipa::path(
    get,
    path = "/v1/me/unread",
    tag = "reads",
    summary = "Unread counts per joined room",
    responses((status = 200, description = "room_id, unread, last_seq, read_seq", body = [Object]), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn unread(
    State(app): State<AppState>,
    Caller(claims): Caller,
) -> Result<Json<Value>, QueryError> {
    app.limits.reads.check(&claims.sub)?;
    let me = claims.sub.as_str();
    let room_ids = member_rooms(&app, me).await?;
    let rooms: Vec<RoomDoc> = app
        .db()
        .collection::<RoomDoc>(ROOMS)
        .find(doc! {"_id": {"$in": &room_ids}})
        .await?
        .try_collect()
        .await?;
    let db = app.db();
    let memberships = db.collection::<MembershipDoc>(MEMBERSHIPS);
    let mut out = Vec::with_capacity(rooms.len());
    for room in &rooms {
        let room_id = room.room_id.as_str();
        let read_seq = memberships
            .find_one(doc! {"_id": membership_id(room_id, me)})
            .await?
            .map_or(0, |m| m.read_seq);
        // Newest first through the history buckets, until the read marker or the cap.
        let mut unread = 0_u64;
        let mut walk = Walk::from_room(&db, room_id, room.history_head, Start::Newest);
        'walk: while let Some(messages) = walk.next_bucket().await? {
            for m in messages {
                if m["seq"].as_i64().unwrap_or(0) <= read_seq || unread >= UNREAD_CAP {
                    break 'walk;
                }
                if m["deleted"] != true && m["user_id"] != me {
                    unread += 1;
                }
            }
        }
        out.push(json!({"room_id": room_id, "unread": unread, "last_seq": room.last_seq, "read_seq": read_seq}));
    }
    Ok(Json(json!(out)))
}
