//! The catalog: every event type with its Avro record name, schema file, topic and the `kind`
//! string clients see in socket frames. One macro invocation keeps the five in step.

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use crate::events::*;
use crate::topics::Topic;
use crate::{Envelope, SchemaError};

/// Avro namespace of every record in the contract.
pub const NAMESPACE: &str = "chat.events";

macro_rules! catalog {
    ($( $variant:ident { kind: $kind:literal, file: $file:literal, topic: $topic:ident } ),* $(,)?) => {
        /// Which event a record is, independent of its content.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind { $( $variant, )* }

        impl EventKind {
            pub const ALL: &'static [EventKind] = &[ $( EventKind::$variant, )* ];

            /// snake_case name used in socket frames, ClickHouse and logs.
            pub const fn as_str(self) -> &'static str {
                match self { $( EventKind::$variant => $kind, )* }
            }

            /// Fully qualified Avro record name; with the topic it forms the registry subject.
            pub const fn record_name(self) -> &'static str {
                match self { $( EventKind::$variant => concat!("chat.events.", stringify!($variant)), )* }
            }

            /// File name under `schemas/avro/`.
            pub const fn file_name(self) -> &'static str {
                match self { $( EventKind::$variant => $file, )* }
            }

            /// The current schema, as committed.
            pub const fn schema_source(self) -> &'static str {
                match self { $( EventKind::$variant => include_str!(concat!("../avro/", $file)), )* }
            }

            pub const fn topic(self) -> Topic {
                match self { $( EventKind::$variant => Topic::$topic, )* }
            }

            pub fn from_record_name(name: &str) -> Option<EventKind> {
                match name { $( concat!("chat.events.", stringify!($variant)) => Some(EventKind::$variant), )* _ => None }
            }

            pub fn from_kind(kind: &str) -> Option<EventKind> {
                match kind { $( $kind => Some(EventKind::$variant), )* _ => None }
            }
        }

        /// Any event of the contract. Serializes to JSON as `{"kind": "...", "envelope": {...}, ...}`
        /// for socket frames; Avro encoding goes through [`crate::EventCodec`].
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        pub enum DomainEvent { $( $variant($variant), )* }

        impl DomainEvent {
            pub fn kind(&self) -> EventKind {
                match self { $( DomainEvent::$variant(_) => EventKind::$variant, )* }
            }

            pub fn envelope(&self) -> &Envelope {
                match self { $( DomainEvent::$variant(e) => &e.envelope, )* }
            }

            pub fn envelope_mut(&mut self) -> &mut Envelope {
                match self { $( DomainEvent::$variant(e) => &mut e.envelope, )* }
            }

            /// The event's fields as an Avro value (before resolution against its schema).
            pub(crate) fn to_avro(&self) -> Result<Value, apache_avro::Error> {
                match self { $( DomainEvent::$variant(e) => apache_avro::to_value(e), )* }
            }

            /// Builds the typed event from a value already resolved against its reader schema.
            pub(crate) fn from_avro(kind: EventKind, value: &Value) -> Result<DomainEvent, apache_avro::Error> {
                Ok(match kind { $( EventKind::$variant => DomainEvent::$variant(apache_avro::from_value(value)?), )* })
            }
        }

        $(
            impl From<$variant> for DomainEvent {
                fn from(e: $variant) -> Self { DomainEvent::$variant(e) }
            }
        )*
    };
}

catalog! {
    RoomCreated { kind: "room_created", file: "room_created.avsc", topic: RoomEvents },
    RoomUpdated { kind: "room_updated", file: "room_updated.avsc", topic: RoomEvents },
    MemberJoined { kind: "member_joined", file: "member_joined.avsc", topic: RoomEvents },
    MemberLeft { kind: "member_left", file: "member_left.avsc", topic: RoomEvents },
    MemberInvited { kind: "member_invited", file: "member_invited.avsc", topic: RoomEvents },
    MemberBanned { kind: "member_banned", file: "member_banned.avsc", topic: RoomEvents },
    MemberRoleChanged { kind: "member_role_changed", file: "member_role_changed.avsc", topic: RoomEvents },
    MessagePosted { kind: "message_posted", file: "message_posted.avsc", topic: RoomEvents },
    MessageEdited { kind: "message_edited", file: "message_edited.avsc", topic: RoomEvents },
    MessageDeleted { kind: "message_deleted", file: "message_deleted.avsc", topic: RoomEvents },
    ReactionAdded { kind: "reaction_added", file: "reaction_added.avsc", topic: RoomEvents },
    ReactionRemoved { kind: "reaction_removed", file: "reaction_removed.avsc", topic: RoomEvents },
    ReadMarkerSet { kind: "read_marker_set", file: "read_marker_set.avsc", topic: RoomEvents },
    AttachmentUploaded { kind: "attachment_uploaded", file: "attachment_uploaded.avsc", topic: RoomEvents },
    CallStarted { kind: "call_started", file: "call_started.avsc", topic: RoomEvents },
    CallJoined { kind: "call_joined", file: "call_joined.avsc", topic: RoomEvents },
    CallLeft { kind: "call_left", file: "call_left.avsc", topic: RoomEvents },
    CallEnded { kind: "call_ended", file: "call_ended.avsc", topic: RoomEvents },
    UserRegistered { kind: "user_registered", file: "user_registered.avsc", topic: UserEvents },
    UserProfileUpdated { kind: "user_profile_updated", file: "user_profile_updated.avsc", topic: UserEvents },
    SessionRevoked { kind: "session_revoked", file: "session_revoked.avsc", topic: UserEvents },
    PresenceChanged { kind: "presence_changed", file: "presence_changed.avsc", topic: PresenceEvents },
}

impl EventKind {
    /// Registry subject under Confluent's `TopicRecordNameStrategy`: `<topic>-<record name>`.
    /// Several event types share a topic, and each evolves on its own, so the subject must
    /// include both (TopicNameStrategy would force one schema per topic).
    pub fn subject(self) -> String {
        format!("{}-{}", self.topic().name(), self.record_name())
    }

    /// The committed schema, parsed.
    pub fn parsed_schema(self) -> Result<apache_avro::Schema, SchemaError> {
        apache_avro::Schema::parse_str(self.schema_source()).map_err(|e| {
            SchemaError::BundledSchema {
                file: self.file_name(),
                reason: e.to_string(),
            }
        })
    }
}

impl DomainEvent {
    pub fn topic(&self) -> Topic {
        self.kind().topic()
    }

    /// The partitioning key: the room for room events, the user otherwise.
    pub fn key(&self) -> Option<&str> {
        let envelope = self.envelope();
        match self.topic() {
            Topic::RoomEvents => envelope.room_id.as_deref(),
            _ => envelope.user_id.as_deref(),
        }
    }

    /// Checks what the schema alone cannot: the envelope fields its topic requires. Writers call
    /// it before producing so no consumer ever has to cope with a keyless or seq-less room event.
    pub fn validate(&self) -> Result<(), SchemaError> {
        let kind = self.kind().as_str();
        let envelope = self.envelope();
        let invalid = |reason: &str| SchemaError::InvalidEnvelope {
            kind,
            reason: reason.to_string(),
        };
        if uuid::Uuid::parse_str(&envelope.event_id).is_err() {
            return Err(invalid("event_id is not a UUID"));
        }
        match self.topic() {
            Topic::RoomEvents => {
                if envelope.room_id.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid("room events need room_id"));
                }
                if envelope.seq.is_none_or(|s| s < 1) {
                    return Err(invalid("room events need seq >= 1"));
                }
            }
            _ => {
                if envelope.user_id.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid("user and presence events need user_id"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_parses_and_is_named_like_its_kind() {
        for &kind in EventKind::ALL {
            let schema = kind.parsed_schema().unwrap();
            let name = match &schema {
                apache_avro::Schema::Record(r) => r.name.fullname(None),
                other => panic!("{} is not a record: {other:?}", kind.file_name()),
            };
            assert_eq!(name, kind.record_name());
            assert_eq!(EventKind::from_record_name(&name), Some(kind));
            assert_eq!(EventKind::from_kind(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::ALL.len(), 22);
    }

    #[test]
    fn every_schema_starts_with_the_shared_envelope() {
        let envelope: serde_json::Value =
            serde_json::from_str(include_str!("../avro/envelope.avsc")).unwrap();
        for &kind in EventKind::ALL {
            let schema: serde_json::Value = serde_json::from_str(kind.schema_source()).unwrap();
            let first = &schema["fields"][0];
            assert_eq!(first["name"], "envelope", "{}", kind.file_name());
            assert_eq!(
                first["type"],
                envelope,
                "{} has a different envelope",
                kind.file_name()
            );
        }
    }

    #[test]
    fn subjects_follow_topic_record_name_strategy() {
        assert_eq!(
            EventKind::MessagePosted.subject(),
            "chat.room-events-chat.events.MessagePosted"
        );
        assert_eq!(
            EventKind::PresenceChanged.subject(),
            "chat.presence-events-chat.events.PresenceChanged"
        );
    }

    #[test]
    fn validate_rejects_envelopes_that_break_topic_rules() {
        let ok = DomainEvent::from(MessageDeleted {
            envelope: Envelope::for_room("room-1", 3, Some("u".into())),
            message_id: "m".into(),
        });
        ok.validate().unwrap();

        let mut no_seq = ok.clone();
        no_seq.envelope_mut().seq = None;
        assert!(no_seq.validate().is_err());

        let user_event_without_user = DomainEvent::from(SessionRevoked {
            envelope: Envelope::for_room("room-1", 1, None),
            session_id: "s".into(),
            reason: "logout".into(),
        });
        assert!(user_event_without_user.validate().is_err());
    }

    #[test]
    fn json_form_is_tagged_with_kind() {
        let event = DomainEvent::from(MessageEdited {
            envelope: Envelope::for_room("r", 2, None),
            message_id: "m".into(),
            content: "hi".into(),
        });
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "message_edited");
        assert_eq!(json["content"], "hi");
        let back: DomainEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
