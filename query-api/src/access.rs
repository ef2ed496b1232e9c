//! Who may read a room: members always; anyone not banned when it is public. A private room is
//! invisible (404) to everyone else, so its existence does not leak.

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use read_model::{MEMBERSHIPS, ROOMS, membership_id};

use crate::app::App;
use crate::error::QueryError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A member, with this role.
    Member(String),
    /// Not a member of a public room.
    Visitor,
}

/// The room document, if the caller may read the room.
pub async fn readable_room(
    app: &App,
    room_id: &str,
    user_id: &str,
) -> Result<(Document, Access), QueryError> {
    if uuid::Uuid::parse_str(room_id).is_err() {
        return Err(QueryError::invalid("room_id is not a valid id"));
    }
    let db = &app.db();
    let room = db
        .collection::<Document>(ROOMS)
        .find_one(doc! {"_id": room_id})
        .await?
        .ok_or(QueryError::NotFound("room"))?;
    let public = room.get_str("visibility") == Ok("public");
    let membership = db
        .collection::<Document>(MEMBERSHIPS)
        .find_one(doc! {"_id": membership_id(room_id, user_id)})
        .await?;
    let status = membership.as_ref().and_then(|m| m.get_str("status").ok());
    match status {
        Some("member") => {
            let role = membership
                .as_ref()
                .and_then(|m| m.get_str("role").ok())
                .unwrap_or("member")
                .to_string();
            Ok((room, Access::Member(role)))
        }
        Some("banned") if public => Err(QueryError::Forbidden(
            "banned",
            "you are banned from this room".into(),
        )),
        _ if public => Ok((room, Access::Visitor)),
        _ => Err(QueryError::NotFound("room")),
    }
}

/// Ids of the rooms the user is a member of.
pub async fn member_rooms(app: &App, user_id: &str) -> Result<Vec<String>, QueryError> {
    let mut cursor = app
        .db()
        .collection::<Document>(MEMBERSHIPS)
        .find(doc! {"user_id": user_id, "status": "member"})
        .await?;
    let mut rooms = Vec::new();
    while let Some(m) = cursor.try_next().await? {
        if let Ok(room) = m.get_str("room_id") {
            rooms.push(room.to_string());
        }
    }
    Ok(rooms)
}
