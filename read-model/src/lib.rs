//! The read-model contract: what the projectors write into MongoDB and Redis and the query tier
//! reads back, kept in one crate so neither tier imports the other.
//!
//! Collections (database `CHAT_MONGO_DB`, default `chat`, or its live generation, see [`live`]):
//! - [`MESSAGES`]: one document per message, `_id` = message id: the seed's message document
//!   plus `seq`, `deleted` and `last_seq` (the seq of the last event applied to it); its words
//!   are indexed in [`search::SEARCH`] (a search re-derives them from the content). Edits,
//!   deletes and reactions are applied to it in place.
//! - [`history::HISTORY`]: the same messages again, grouped into buckets of consecutive `seq`s
//!   per room, for paging by equality lookups (see [`history`]).
//! - [`search::SEARCH`]: the token postings search reads (see [`search`]).
//! - [`ROOMS`]: name, visibility, topic, owner, `member_count`, `message_count`,
//!   `last_activity`, `last_seq` (the projector's progress for the room) and `history_head`.
//! - [`MEMBERSHIPS`]: one document per (room, user), `_id` = [`membership_id`]: role, status
//!   (member, invited, banned, left) and read marker `read_seq`.
//! - [`FILES`]: files shared into rooms, for download authorization.
//! - [`PROGRESS`]: the projector's partition checkpoints.

pub mod history;
pub mod live;
pub mod search;
pub mod text;

pub const MESSAGES: &str = "messages";
pub const ROOMS: &str = "rooms";
pub const MEMBERSHIPS: &str = "memberships";
pub const FILES: &str = "files";
pub const PROGRESS: &str = "projection_progress";

/// The `_id` of a membership document.
pub fn membership_id(room: &str, user: &str) -> String {
    format!("{room}:{user}")
}
