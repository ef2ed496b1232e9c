//! The metadata every event carries (`avro/envelope.avsc`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUID v7: time-ordered, so ids sort roughly by creation and index well.
    pub event_id: String,
    pub room_id: Option<String>,
    pub user_id: Option<String>,
    /// Gap-free per room, assigned by the room's single writer; `None` off room topics.
    pub seq: Option<i64>,
    pub actor_id: Option<String>,
    /// Unix milliseconds.
    pub occurred_at: i64,
    pub causation_id: Option<String>,
    pub correlation_id: Option<String>,
    pub idempotency_key: Option<String>,
}

impl Envelope {
    /// Envelope of a room event; `seq` comes from the room's single writer.
    pub fn for_room(room_id: impl Into<String>, seq: i64, actor_id: Option<String>) -> Self {
        Self {
            event_id: new_event_id(),
            room_id: Some(room_id.into()),
            user_id: None,
            seq: Some(seq),
            actor_id,
            occurred_at: now_ms(),
            causation_id: None,
            correlation_id: None,
            idempotency_key: None,
        }
    }

    /// Envelope of a user or presence event.
    pub fn for_user(user_id: impl Into<String>, actor_id: Option<String>) -> Self {
        Self {
            event_id: new_event_id(),
            room_id: None,
            user_id: Some(user_id.into()),
            seq: None,
            actor_id,
            occurred_at: now_ms(),
            causation_id: None,
            correlation_id: None,
            idempotency_key: None,
        }
    }
}

pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
