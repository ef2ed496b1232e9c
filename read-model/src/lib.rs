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
//!
//! The Redis model (presence, room stats, membership sets) is described in [`presence`].

pub mod documents;
pub mod history;
pub mod live;
pub mod presence;
pub mod search;
pub mod text;

use std::time::Duration;

use backon::{ConstantBuilder, Retryable};
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

pub const MESSAGES: &str = "messages";
pub const ROOMS: &str = "rooms";
pub const MEMBERSHIPS: &str = "memberships";
pub const FILES: &str = "files";
pub const PROGRESS: &str = "projection_progress";

/// The `_id` of a membership document.
pub fn membership_id(room: &str, user: &str) -> String {
    format!("{room}:{user}")
}

/// Creates the collections' indexes (idempotent). A server may answer WriteConflict (112) when
/// another client changes the same collection's indexes at the same time (projectors and
/// rebuilds start together), so each creation is retried for a while.
pub async fn ensure_indexes(db: &Database) -> mongodb::error::Result<()> {
    let index = |keys: Document| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().unique(false).build())
            .build()
    };
    // Only what equality lookups use: history is read by `_id` (buckets) and search by the
    // postings' keys (see [`history`] and [`search`]). The seed's range indexes on messages (room_id or
    // user_id with timestamp) are left out: no read here ranges over messages, and on FerretDB
    // each index costs every insert a PostgreSQL index entry and a GIN entry
    // (deploy/local/ferretdb/equality-indexes.sql).
    let wanted = [
        (search::SEARCH, doc! {search::INDEXED[0]: 1}),
        (search::SEARCH, doc! {search::INDEXED[1]: 1}),
        (MEMBERSHIPS, doc! {"user_id": 1, "status": 1}),
        (MEMBERSHIPS, doc! {"room_id": 1, "status": 1}),
        (ROOMS, doc! {"visibility": 1, "last_activity": -1}),
    ];
    for (collection, keys) in wanted {
        let collection = db.collection::<Document>(collection);
        (|| async { collection.create_index(index(keys.clone())).await })
            .retry(
                ConstantBuilder::default()
                    .with_delay(Duration::from_millis(100))
                    .with_jitter()
                    .with_max_times(50),
            )
            .when(is_busy)
            .await?;
    }
    Ok(())
}

fn is_busy(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, mongodb::error::ErrorKind::Command(c) if c.code == 112)
}

/// Readiness: the MongoDB-protocol server answers `ping`.
pub async fn ping(db: &Database) -> Result<(), String> {
    db.run_command(doc! {"ping": 1})
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
