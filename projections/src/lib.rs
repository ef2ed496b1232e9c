//! The read side: projectors that fold the event log into read models. Each projector reads
//! every partition of its topics from its own checkpoints (kept in its store, with its data)
//! and applies each room's events exactly once, in order; what it cannot apply goes to
//! `chat.dead-letter` and it moves on.

pub mod analytics;
pub mod config;
pub mod deadletter;
pub mod directory;
pub mod error;
pub mod gate;
pub mod live;
pub mod model;
pub mod mongo;
pub mod presence;
pub mod runner;
pub mod source;
pub mod verify;

pub use error::ProjectionError;

/// The snake_case name of a contract enum (its serde form), as the read models store it.
pub(crate) fn enum_str<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The names of the projectors, as `CHAT_PROJECTORS` and `replay-tools` spell them.
pub const PROJECTORS: [&str; 4] = ["mongo", "redis", "clickhouse", "directory"];

/// The topics a projector reads, by name.
pub fn topics_of(projector: &str) -> Option<Vec<schemas::topics::Topic>> {
    match projector {
        "mongo" => Some(mongo::MongoProjector::topics()),
        "redis" => Some(presence::PresenceProjector::topics()),
        "clickhouse" => Some(analytics::AnalyticsProjector::topics()),
        "directory" => Some(directory::DirectoryProjector::topics()),
        _ => None,
    }
}
