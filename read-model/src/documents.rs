//! The room, membership and file documents as the history projector keeps them and the query
//! tier reads them: one typed shape per collection, so a change of field on either side is a
//! change here. Fields a later version of the projector added are optional, so documents of an
//! older generation still read.

use mongodb::bson::DateTime;
use serde::Deserialize;

/// A document of [`crate::ROOMS`].
#[derive(Debug, Clone, Deserialize)]
pub struct RoomDoc {
    #[serde(rename = "_id")]
    pub room_id: String,
    #[serde(default)]
    pub name: String,
    /// `public` or `private` (the event contract's `Visibility`, snake_case).
    #[serde(default)]
    pub visibility: String,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub owner_id: Option<String>,
    #[serde(default)]
    pub member_count: i64,
    #[serde(default)]
    pub message_count: i64,
    /// The seq of the last event the projector applied to the room.
    #[serde(default)]
    pub last_seq: i64,
    #[serde(default)]
    pub created_at: Option<DateTime>,
    #[serde(default)]
    pub last_activity: Option<DateTime>,
    /// The newest history bucket (see [`crate::history`]); absent before the first message.
    #[serde(default)]
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
#[derive(Debug, Clone, Deserialize)]
pub struct FileDoc {
    #[serde(default)]
    pub uploader_id: String,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub size: Option<i64>,
    /// The rooms the file was shared in.
    #[serde(default)]
    pub rooms: Vec<String>,
}
