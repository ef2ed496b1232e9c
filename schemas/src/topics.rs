//! Topic names, partition counts and settings: the one place they are defined.
//!
//! Retention is unlimited (`retention.ms=-1`) on the domain topics because they are the source
//! of truth: every read model is rebuilt by replaying them from offset 0. Topics are created
//! explicitly at start-up (`replay-tools topics ensure`, run by `deploy/local/up`), with the
//! replication the deployment asks for, and the broker's automatic topic creation stays off, so
//! a typo in a topic name fails loudly instead of creating an empty log.

/// Room lifecycle, membership, messages, reactions, read markers, calls, attachments.
/// Key = `room_id`; order within a room is total.
pub const ROOM_EVENTS: &str = "chat.room-events";
/// Registration, profile changes, session revocation. Key = `user_id`.
pub const USER_EVENTS: &str = "chat.user-events";
/// Connected / disconnected / away, emitted by ws-fanout. Key = `user_id`.
pub const PRESENCE_EVENTS: &str = "chat.presence-events";
/// Records a projector could not apply, with the error and the origin offset.
pub const DEAD_LETTER: &str = "chat.dead-letter";

/// `retention.ms` meaning "never delete".
pub const RETAIN_FOREVER_MS: &str = "-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    RoomEvents,
    UserEvents,
    PresenceEvents,
    DeadLetter,
}

impl Topic {
    pub const ALL: [Topic; 4] = [
        Topic::RoomEvents,
        Topic::UserEvents,
        Topic::PresenceEvents,
        Topic::DeadLetter,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Topic::RoomEvents => ROOM_EVENTS,
            Topic::UserEvents => USER_EVENTS,
            Topic::PresenceEvents => PRESENCE_EVENTS,
            Topic::DeadLetter => DEAD_LETTER,
        }
    }

    /// Default partition count when the topic is created. Room events get the most because the
    /// room partition is the unit of write ownership and of projector parallelism.
    pub const fn default_partitions(self) -> i32 {
        match self {
            Topic::RoomEvents => 12,
            Topic::UserEvents => 6,
            Topic::PresenceEvents => 6,
            Topic::DeadLetter => 3,
        }
    }

    /// Topic-level settings passed at creation and checked on existing topics.
    pub const fn config(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // Source of truth: keep forever, never compact (compaction would drop history).
            Topic::RoomEvents | Topic::UserEvents | Topic::DeadLetter => &[
                ("cleanup.policy", "delete"),
                ("retention.ms", RETAIN_FOREVER_MS),
            ],
            // Presence is only interesting while fresh; a week is plenty for analytics.
            Topic::PresenceEvents => &[("cleanup.policy", "delete"), ("retention.ms", "604800000")],
        }
    }

    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for topic in Topic::ALL {
            assert_eq!(Topic::from_name(topic.name()), Some(topic));
        }
        assert_eq!(Topic::from_name("chat.nope"), None);
    }
}
