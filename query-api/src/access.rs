//! Who may read a room: members always; anyone not banned when it is public. A private room is
//! invisible (404) to everyone else, so its existence does not leak.

use futures::TryStreamExt;
use mongodb::bson::doc;
use read_model::documents::{MembershipDoc, RoomDoc};
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
) -> Result<(RoomDoc, Access), QueryError> {
    if uuid::Uuid::parse_str(room_id).is_err() {
        return Err(QueryError::invalid("room_id is not a valid id"));
    }
    let db = &app.db();
    let room = db
        .collection::<RoomDoc>(ROOMS)
        .find_one(doc! {"_id": room_id})
        .await?
        .ok_or(QueryError::NotFound("room"))?;
    let public = room.is_public();
    let membership = db
        .collection::<MembershipDoc>(MEMBERSHIPS)
        .find_one(doc! {"_id": membership_id(room_id, user_id)})
        .await?;
    match membership.map(|m| (m.status, m.role)) {
        Some((status, role)) if status == "member" => Ok((room, Access::Member(role))),
        Some((status, _)) if status == "banned" && public => Err(QueryError::Forbidden(
            "banned",
            "you are banned from this room".into(),
        )),
        _ if public => Ok((room, Access::Visitor)),
        _ => Err(QueryError::NotFound("room")),
    }
}

/// Ids of the rooms the user is a member of.
pub async fn member_rooms(app: &App, user_id: &str) -> Result<Vec<String>, QueryError> {
    rooms_where(app, user_id, "member").await
}

/// Ids of the rooms the user was invited to and has not joined (nor left or been banned from
/// since: the read model keeps one status per user and room).
pub async fn invited_rooms(app: &App, user_id: &str) -> Result<Vec<String>, QueryError> {
    rooms_where(app, user_id, "invited").await
}

async fn rooms_where(app: &App, user_id: &str, status: &str) -> Result<Vec<String>, QueryError> {
    let memberships: Vec<MembershipDoc> = app
        .db()
        .collection::<MembershipDoc>(MEMBERSHIPS)
        .find(doc! {"user_id": user_id, "status": status})
        .await?
        .try_collect()
        .await?;
    Ok(memberships.into_iter().map(|m| m.room_id).collect())
}
