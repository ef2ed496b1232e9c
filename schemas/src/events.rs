//! The Rust type of each event. Field names and types mirror `avro/<snake_name>.avsc`; the
//! round-trip test through the real registry and broker keeps the two in step.

use serde::{Deserialize, Serialize};

use crate::Envelope;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Public,
    Private,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Moderator,
    Member,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    Text,
    Image,
    File,
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallMedia {
    Audio,
    Video,
}

/// How a call's media flows: between the two participants, or through the platform's SFU
/// (Janus), which group calls need (a mesh of n participants sends n-1 copies of everything).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CallTopology {
    #[default]
    P2p,
    Sfu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Away,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub file_id: String,
    pub filename: String,
    pub size: i64,
    pub mime_type: String,
    pub url: String,
}

// ---- room lifecycle and membership (chat.room-events) ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCreated {
    pub envelope: Envelope,
    pub name: String,
    pub visibility: Visibility,
    pub topic: Option<String>,
    pub owner_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomUpdated {
    pub envelope: Envelope,
    pub name: String,
    pub visibility: Visibility,
    pub topic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberJoined {
    pub envelope: Envelope,
    pub member_id: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLeft {
    pub envelope: Envelope,
    pub member_id: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInvited {
    pub envelope: Envelope,
    pub invitee_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberBanned {
    pub envelope: Envelope,
    pub member_id: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRoleChanged {
    pub envelope: Envelope,
    pub member_id: String,
    pub old_role: Role,
    pub new_role: Role,
}

// ---- messages, reactions, read markers, attachments (chat.room-events) ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePosted {
    pub envelope: Envelope,
    pub message_id: String,
    pub author_id: String,
    pub content: String,
    pub message_type: MessageType,
    pub reply_to: Option<String>,
    pub attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEdited {
    pub envelope: Envelope,
    pub message_id: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDeleted {
    pub envelope: Envelope,
    pub message_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionAdded {
    pub envelope: Envelope,
    pub message_id: String,
    pub member_id: String,
    pub emoji: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionRemoved {
    pub envelope: Envelope,
    pub message_id: String,
    pub member_id: String,
    pub emoji: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMarkerSet {
    pub envelope: Envelope,
    pub member_id: String,
    pub read_seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentUploaded {
    pub envelope: Envelope,
    pub file_id: String,
    pub uploader_id: String,
    pub filename: String,
    pub size: i64,
    pub mime_type: String,
    pub sha256: String,
    pub url: String,
}

// ---- calls (chat.room-events) ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallStarted {
    pub envelope: Envelope,
    pub call_id: String,
    pub initiator_id: String,
    pub media: CallMedia,
    /// Calls written before group calls have none: they were peer to peer.
    #[serde(default)]
    pub topology: CallTopology,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallJoined {
    pub envelope: Envelope,
    pub call_id: String,
    pub member_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLeft {
    pub envelope: Envelope,
    pub call_id: String,
    pub member_id: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallEnded {
    pub envelope: Envelope,
    pub call_id: String,
    pub duration_ms: i64,
    pub reason: Option<String>,
}

// ---- users (chat.user-events) ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    pub envelope: Envelope,
    pub username: String,
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProfileUpdated {
    pub envelope: Envelope,
    pub display_name: Option<String>,
    pub avatar_file_id: Option<String>,
    pub status_text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRevoked {
    pub envelope: Envelope,
    pub session_id: String,
    pub reason: String,
}

// ---- presence (chat.presence-events) ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChanged {
    pub envelope: Envelope,
    pub status: PresenceStatus,
    pub node_id: String,
}
