//! History paging and search.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use mongodb::bson::{Document, doc};
use read_model::MESSAGES;
use read_model::history::{self, Start};
use read_model::search::{self, Below};
use serde_json::{Value, json};

use crate::access::{member_rooms, readable_room};
use crate::app::AppState;
use crate::error::QueryError;
use crate::params::Params;

/// The message as API.md shows it: reactions grouped by emoji.
pub fn message_json(m: &Document) -> Value {
    let mut reactions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Ok(list) = m.get_array("reactions") {
        for r in list.iter().filter_map(|r| r.as_document()) {
            if let (Ok(emoji), Ok(user)) = (r.get_str("emoji"), r.get_str("user_id")) {
                reactions
                    .entry(emoji.to_string())
                    .or_default()
                    .push(user.to_string());
            }
        }
    }
    let attachments: Vec<Value> = m
        .get_array("attachments")
        .map(|list| {
            list.iter()
                .filter_map(|a| a.as_document())
                .map(|a| {
                    json!({
                        "file_id": a.get_str("file_id").unwrap_or_default(),
                        "filename": a.get_str("filename").unwrap_or_default(),
                        "size": a.get_i64("size").unwrap_or_default(),
                        "mime_type": a.get_str("mime_type").unwrap_or_default(),
                        "url": a.get_str("url").unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "message_id": m.get_str("_id").unwrap_or_default(),
        "room_id": m.get_str("room_id").unwrap_or_default(),
        "seq": m.get_i64("seq").unwrap_or_default(),
        "user_id": m.get_str("user_id").unwrap_or_default(),
        "content": m.get_str("content").unwrap_or_default(),
        "message_type": m.get_str("message_type").unwrap_or("text"),
        "timestamp": m.get_datetime("timestamp").map(|t| t.timestamp_millis()).unwrap_or_default(),
        "edited_at": m.get_datetime("edited_at").ok().map(|t| t.timestamp_millis()),
        "deleted": m.get_bool("deleted").unwrap_or(false),
        "reply_to": m.get_str("reply_to").ok(),
        "reactions": reactions.into_iter().map(|(emoji, user_ids)| json!({"emoji": emoji, "user_ids": user_ids})).collect::<Vec<_>>(),
        "attachments": attachments,
    })
}

/// `GET /v1/rooms/{room_id}/messages?before=SEQ|after=SEQ&limit=N` (1-200, default 50).
/// Without a cursor: the newest messages. `before`: older ones, newest first; `after`: newer
/// ones, oldest first. `next_before` / `next_after` continue the walk when there is more.
pub async fn history(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(room_id): Path<String>,
    params: Params,
) -> Result<Json<Value>, QueryError> {
    let claims = app.authenticate(&headers).await?;
    readable_room(&app, &room_id, &claims.sub).await?;
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
    let (page, more) = history::page(&app.db(), &room_id, start, limit as usize).await?;
    let mut body = json!({"messages": page.iter().map(message_json).collect::<Vec<_>>()});
    if more {
        let edge = page.last().and_then(|m| history::integer(m, "seq"));
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
pub async fn search(
    State(app): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<Value>, QueryError> {
    let claims = app.authenticate(&headers).await?;
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
    let rooms: Vec<String> = match params.get("room_id") {
        Some(room_id) => {
            readable_room(&app, room_id, &claims.sub).await?;
            vec![room_id.to_string()]
        }
        None => member_rooms(&app, &claims.sub).await?,
    };
    let db = app.db();
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
    let mut hits: Vec<Document> = Vec::new();
    for room in &rooms {
        let below = Below {
            seq: cursor
                .as_ref()
                .filter(|c| c.get_str("room_id") == Ok(room.as_str()))
                .and_then(|c| history::integer(c, "seq")),
            message_id: before.as_deref(),
        };
        hits.extend(search::search_room(&db, room, &tokens, below, limit as usize + 1).await?);
    }
    hits.sort_by(|a, b| {
        b.get_str("_id")
            .unwrap_or_default()
            .cmp(a.get_str("_id").unwrap_or_default())
    });
    let more = hits.len() as i64 > limit;
    hits.truncate(limit as usize);
    let mut body = json!({"messages": hits.iter().map(message_json).collect::<Vec<_>>()});
    if more && let Some(last) = hits.last() {
        body["next_before"] = json!(last.get_str("_id").unwrap_or_default());
    }
    Ok(Json(body))
}
