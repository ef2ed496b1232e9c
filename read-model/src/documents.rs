//! The room, membership and file documents as the history projector keeps them and the query
//! tier reads them: one typed shape per collection, so a change of field on either side is a
//! change here. Fields a later version of the projector added are optional, so documents of an
//! older generation still read.

use mongodb::bson::DateTime;
use serde::Deserialize;

/// A document of [`crate::ROOMS`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoomDoc {
    #[serde(rename = "_id")]
    pub room_id: String,
    pub name: String,
    /// `public` or `private` (the event contract's `Visibility`, snake_case).
    pub visibility: String,
    pub topic: Option<String>,
    pub owner_id: Option<String>,
    pub member_count: i64,
    pub message_count: i64,
    /// The seq of the last event the projector applied to the room.
    pub last_seq: i64,
    pub created_at: Option<DateTime>,
    pub last_activity: Option<DateTime>,
    /// The newest history bucket (see [`crate::history`]); absent before the first message.
    pub history_head: Option<i64>,
}

impl RoomDoc {
    pub fn is_public(&self) -> bool {
        self.visibility == "public"
    }
}

/// A document of [`crate::MEMBERSHIPS`], `_id` = [`crate::membership_id`].
#[derive(Debug, Clone, Deserialize)]
pub struct MembershipDoc {
    pub room_id: String,
    pub user_id: String,
    /// `owner`, `moderator` or `member`.
    #[serde(default = "member")]
    pub role: String,
    /// `member`, `invited`, `banned` or `left`.
    pub status: String,
    /// The member's read marker.
    #[serde(default)]
    pub read_seq: i64,
}

fn member() -> String {
    "member".into()
}

/// A document of [`crate::FILES`], `_id` = the file id.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FileDoc {
    pub uploader_id: String,
    pub filename: Option<String>,
    pub mime_type: Option<String>,
    pub size: Option<i64>,
    /// The rooms the file was ever shared in.
    pub rooms: Vec<String>,
    /// The messages that show it now (a deleted message stops sharing its files). `None` on
    /// documents projected before shares were kept: then `rooms` stands in.
    pub shared: Option<Vec<Share>>,
}

/// A message of a room showing a file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Share {
    pub message_id: String,
    pub room_id: String,
}

impl FileDoc {
    /// The rooms whose readers may download the file.
    pub fn readable_through(&self) -> Vec<&str> {
        let mut rooms: Vec<&str> = match &self.shared {
            Some(shares) => shares.iter().map(|s| s.room_id.as_str()).collect(),
            None => self.rooms.iter().map(String::as_str).collect(),
        };
        rooms.sort_unstable();
        rooms.dedup();
        rooms
    }
}
