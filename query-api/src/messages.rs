//! History paging and search.

use axum::Json;
use axum::extract::{Path, State};
use mongodb::bson::{Document, doc};
use platform::auth::Caller;
use read_model::documents::RoomDoc;
use read_model::history::{self, Start};
use read_model::search::{self, Below};
use read_model::{MESSAGES, ROOMS};
use serde_json::{Value, json};

use crate::access::{member_rooms, readable_room};
use crate::app::AppState;
use crate::error::QueryError;
use crate::params::Params;

/// `GET /v1/rooms/{room_id}/messages?before=SEQ|after=SEQ&limit=N` (1-200, default 50).
/// Without a cursor: the newest messages. `before`: older ones, newest first; `after`: newer
/// ones, oldest first. `next_before` / `next_after` continue the walk when there is more.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room_id}/messages",
    tag = "reads",
    summary = "A page of history by seq",
    params(("room_id" = String, Path, description = "the room"), ("before" = Option<i64>, Query, description = "messages with a smaller seq"), ("after" = Option<i64>, Query, description = "messages with a larger seq"), ("limit" = Option<i64>, Query, description = "1-200, default 50")),
    responses((status = 200, description = "{messages: [message], next_before?, next_after?}", body = Object), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn history(
    State(app): State<AppState>,
    Caller(claims): Caller,
    Path(room_id): Path<String>,
    params: Params,
) -> Result<Json<Value>, QueryError> {
    app.limits.history.check(&claims.sub)?;
    let (room, _) = readable_room(&app, &room_id, &claims.sub).await?;
    let limit = params.int("limit", 50, 1..=200)?;
    let before = params.opt_int("before", 1..=i64::MAX)?;
    let after = params.opt_int("after", 0..=i64::MAX)?;
    if before.is_some() && after.is_some() {
        return Err(QueryError::invalid("use either before or after, not both"));
    }
    let start = match (before, after) {
        (_, Some(after)) => Start::After(after),
        (Some(before), None) => Start::Before(before),
        (None, None) => Start::Newest,
    };
    let (page, more) = history::page(
        &app.db(),
        &room_id,
        room.history_head,
        start,
        limit as usize,
    )
    .await?;
    let mut body = json!({"messages": page});
    if more {
        let edge = page.last().map(|m| m["seq"].clone());
        let cursor = match start {
            Start::After(_) => "next_after",
            _ => "next_before",
        };
        body[cursor] = json!(edge);
    }
    Ok(Json(body))
}

/// `GET /v1/search?q=...&room_id=&limit=&before=` — messages containing every word of `q`
/// (case and accents folded, CJK by character pairs) in rooms the caller is a member of (or
/// the one public room given by `room_id`), newest first, from the postings of each room
/// (`read_model::search`). `before` (a message id, from `next_before`) pages further back:
/// message ids are UUID v7, so they sort by time.
#[utoipa::path(
    get,
    path = "/v1/search",
    tag = "reads",
    summary = "Search the caller's readable rooms",
    params(("q" = String, Query, description = "words that must all occur"), ("room_id" = Option<String>, Query, description = "only this room"), ("limit" = Option<i64>, Query, description = "1-100, default 20"), ("before" = Option<String>, Query, description = "the next_before of the previous page")),
    responses((status = 200, description = "{messages: [message], next_before?}", body = Object), platform::openapi::Refused),
    security(("bearer" = []))
)]
pub async fn search(
    State(app): State<AppState>,
    Caller(claims): Caller,
    params: Params,
) -> Result<Json<Value>, QueryError> {
    app.limits.search.check(&claims.sub)?;
    let q = params
        .get("q")
        .ok_or_else(|| QueryError::invalid("q is required"))?;
    if q.chars().count() > 200 {
        return Err(QueryError::invalid("q must be at most 200 characters"));
    }
    let tokens = read_model::text::query_tokens(q);
    if tokens.is_empty() {
        return Err(QueryError::invalid("q has no searchable words"));
    }
    let limit = params.int("limit", 20, 1..=100)?;
    let before = params
        .get("before")
        .map(|b| uuid::Uuid::parse_str(b).map(|u| u.to_string()))
        .transpose()
        .map_err(|_| QueryError::invalid("before must be a message id"))?;
    let db = app.db();
    // Each room with its last seq, where its search starts.
    let rooms: Vec<(String, i64)> = match params.get("room_id") {
        Some(room_id) => {
            let (room, _) = readable_room(&app, room_id, &claims.sub).await?;
            vec![(room_id.to_string(), room.last_seq)]
        }
        None => {
            let mut rooms = Vec::new();
            for room_id in member_rooms(&app, &claims.sub).await? {
                let room = db
                    .collection::<RoomDoc>(ROOMS)
                    .find_one(doc! {"_id": &room_id})
                    .await?;
                rooms.push((room_id, room.map_or(0, |r| r.last_seq)));
            }
            rooms
        }
    };
    // The cursor's own message tells its room where to continue by seq; the other rooms
    // continue below it in message-id (time) order.
    let cursor = match &before {
        Some(id) => Some(
            db.collection::<Document>(MESSAGES)
                .find_one(doc! {"_id": id})
                .await?
                .ok_or_else(|| QueryError::invalid("before is not a message id"))?,
        ),
        None => None,
    };
    let mut hits: Vec<Value> = Vec::new();
    for (room, last_seq) in &rooms {
        let below = Below {
            seq: cursor
                .as_ref()
                .filter(|c| c.get_str("room_id") == Ok(room.as_str()))
                .and_then(|c| history::integer(c, "seq")),
            message_id: before.as_deref(),
        };
        let want = limit as usize + 1;
        hits.extend(search::search_room(&db, room, *last_seq, &tokens, below, want).await?);
    }
    let id = |m: &Value| m["message_id"].as_str().unwrap_or_default().to_string();
    hits.sort_by_key(|m| std::cmp::Reverse(id(m)));
    let more = hits.len() as i64 > limit;
    hits.truncate(limit as usize);
    let next = hits.last().map(id).filter(|_| more);
    let mut body = json!({"messages": hits});
    if let Some(next) = next {
        body["next_before"] = json!(next);
    }
    Ok(Json(body))
}
