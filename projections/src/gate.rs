//! The per-room ordering rule every projector follows (ARCHITECTURE.md, write path 3): apply
//! only `seq = last + 1`; skip what was already applied; report anything else as a conflict.

use std::collections::{HashMap, VecDeque};

use crate::deadletter::DeadLetter;
use crate::error::ProjectionError;
use crate::runner::Counts;
use crate::source::Record;

/// What a batch's record is to a projector once the gate has seen it.
pub enum Admission<'r> {
    /// A room event to apply: its room and seq.
    Room(&'r str, i64),
    /// A record of another topic.
    Other,
    /// Not to be applied: a duplicate, a conflict, or a room event without room or seq.
    Skip,
}

/// How many recent event ids per room tell a re-read from a second writer's event.
const RECENT: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Apply,
    /// Already applied: a re-read after a restart or a replayed batch.
    Duplicate,
    /// Not the next event of its room (a second writer, a gap): dead-lettered, counted.
    Conflict(String),
}

#[derive(Debug, Default, Clone)]
pub struct RoomCursor {
    pub last_seq: i64,
    pub last_event_id: Option<String>,
    recent: VecDeque<(i64, String)>,
}

impl RoomCursor {
    /// A cursor restored from a store that kept only the last applied event.
    pub fn restored(last_seq: i64, last_event_id: Option<String>) -> Self {
        let mut recent = VecDeque::new();
        if let Some(id) = &last_event_id {
            recent.push_back((last_seq, id.clone()));
        }
        Self {
            last_seq,
            last_event_id,
            recent,
        }
    }
}

/// Cursors of the rooms a projector has seen. Rooms it has not seen must be loaded from the
/// store (`needs`) before their events are judged.
#[derive(Debug, Default)]
pub struct Gate {
    rooms: HashMap<String, RoomCursor>,
    /// Rebuilding from a point in time: a room's first event seen starts it, whatever its seq.
    adopt: bool,
}

impl Gate {
    /// A gate for a model built from a point in time rather than from each room's start.
    pub fn adopting() -> Self {
        Self {
            rooms: HashMap::new(),
            adopt: true,
        }
    }

    pub fn knows(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    pub fn restore(&mut self, room: &str, cursor: RoomCursor) {
        self.rooms.insert(room.to_string(), cursor);
    }

    pub fn cursor(&self, room: &str) -> Option<&RoomCursor> {
        self.rooms.get(room)
    }

    /// Judges the event `(seq, event_id)` of `room` and, when it is to be applied, advances.
    pub fn judge(&mut self, room: &str, seq: i64, event_id: &str) -> Verdict {
        let adopt = self.adopt && !self.rooms.contains_key(room);
        let cursor = self.rooms.entry(room.to_string()).or_default();
        if adopt {
            cursor.last_seq = seq - 1;
        }
        if seq == cursor.last_seq + 1 {
            cursor.last_seq = seq;
            cursor.last_event_id = Some(event_id.to_string());
            cursor.recent.push_back((seq, event_id.to_string()));
            if cursor.recent.len() > RECENT {
                cursor.recent.pop_front();
            }
            return Verdict::Apply;
        }
        if seq <= cursor.last_seq {
            let oldest_known = cursor.recent.front().map(|(s, _)| *s).unwrap_or(i64::MAX);
            match cursor.recent.iter().find(|(s, _)| *s == seq) {
                Some((_, id)) if id == event_id => return Verdict::Duplicate,
                Some((_, id)) => {
                    return Verdict::Conflict(format!(
                        "room {room}: seq {seq} is {id}, not {event_id}"
                    ));
                }
                // Older than what is remembered: a replay (the store is ahead of the log read).
                None if seq < oldest_known => return Verdict::Duplicate,
                None => {}
            }
        }
        Verdict::Conflict(format!(
            "room {room}: expected seq {}, got {seq} ({event_id})",
            cursor.last_seq + 1
        ))
    }

    /// Sorts a batch's record: a room event goes through [`Gate::admit`]; a record of another
    /// topic is not the gate's business.
    pub async fn sort<'r>(
        &mut self,
        record: &'r Record,
        dead_letter: &DeadLetter,
        counts: &mut Counts,
    ) -> Result<Admission<'r>, ProjectionError> {
        if record.topic != schemas::topics::Topic::RoomEvents {
            return Ok(Admission::Other);
        }
        let envelope = record.event.envelope();
        let (Some(room), Some(seq)) = (envelope.room_id.as_deref(), envelope.seq) else {
            return Ok(Admission::Skip);
        };
        Ok(
            if self.admit(record, room, seq, dead_letter, counts).await? {
                Admission::Room(room, seq)
            } else {
                Admission::Skip
            },
        )
    }

    /// Judges a room event and does what every projector does with the verdict: counts a
    /// duplicate, dead-letters and counts a conflict. True when the event is to be applied.
    pub async fn admit(
        &mut self,
        record: &Record,
        room: &str,
        seq: i64,
        dead_letter: &DeadLetter,
        counts: &mut Counts,
    ) -> Result<bool, ProjectionError> {
        match self.judge(room, seq, &record.event.envelope().event_id) {
            Verdict::Apply => Ok(true),
            Verdict::Duplicate => {
                counts.duplicates += 1;
                Ok(false)
            }
            Verdict::Conflict(reason) => {
                counts.conflicts += 1;
                tracing::warn!(%reason, offset = record.offset, partition = record.partition, "conflicting event dead-lettered");
                dead_letter
                    .send(
                        record.topic,
                        record.partition,
                        record.offset,
                        record.key.as_deref(),
                        &record.payload,
                        &format!("conflict: {reason}"),
                    )
                    .await?;
                Ok(false)
            }
        }
    }

    /// Forgets everything (after a failed batch: the store is the truth again).
    pub fn clear(&mut self) {
        self.rooms.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_applies_rereads_skip_others_conflict() {
        let mut gate = Gate::default();
        assert_eq!(gate.judge("r", 1, "a"), Verdict::Apply);
        assert_eq!(gate.judge("r", 2, "b"), Verdict::Apply);
        assert_eq!(gate.judge("r", 2, "b"), Verdict::Duplicate);
        assert_eq!(gate.judge("r", 1, "a"), Verdict::Duplicate);
        assert!(
            matches!(gate.judge("r", 2, "x"), Verdict::Conflict(_)),
            "second writer"
        );
        assert!(
            matches!(gate.judge("r", 5, "c"), Verdict::Conflict(_)),
            "gap"
        );
        assert_eq!(
            gate.judge("r", 3, "c"),
            Verdict::Apply,
            "the gap event did not advance"
        );
        assert!(
            matches!(gate.judge("new", 2, "z"), Verdict::Conflict(_)),
            "rooms start at 1"
        );
    }

    #[test]
    fn restored_cursors_treat_older_events_as_replays() {
        let mut gate = Gate::default();
        gate.restore("r", RoomCursor::restored(10, Some("e10".into())));
        assert_eq!(gate.judge("r", 4, "e4"), Verdict::Duplicate);
        assert_eq!(gate.judge("r", 10, "e10"), Verdict::Duplicate);
        assert!(matches!(gate.judge("r", 10, "other"), Verdict::Conflict(_)));
        assert_eq!(gate.judge("r", 11, "e11"), Verdict::Apply);
    }
}
