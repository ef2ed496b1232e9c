//! What the read models must contain, computed from the events alone: the reference that
//! `replay-tools verify` and the tests compare each store against. It follows the same rule as
//! the projectors (per room, only `seq = last + 1` counts) but shares none of their code.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use schemas::DomainEvent;
use schemas::events::PresenceStatus;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageModel {
    pub room_id: String,
    pub seq: i64,
    pub user_id: String,
    pub content: String,
    pub deleted: bool,
    pub edited: bool,
    /// (user, emoji), sorted.
    pub reactions: BTreeSet<(String, String)>,
    /// For a call's history entry: what its `call` part must show.
    pub call: Option<CallModel>,
}

/// A call as its history entry must show it (`read_model::history::message_json`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallModel {
    pub media: String,
    pub topology: String,
    pub status: String,
    pub participants: BTreeSet<String>,
    pub took_part: BTreeSet<String>,
    pub duration_ms: i64,
    pub reason: Option<String>,
    pub ended_at: Option<i64>,
}

impl CallModel {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "media": self.media,
            "topology": self.topology,
            "status": self.status,
            "participants": self.participants,
            "took_part": self.took_part,
            "duration_ms": self.duration_ms,
            "reason": self.reason,
            "ended_at": self.ended_at,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomModel {
    pub name: String,
    pub visibility: String,
    pub last_seq: i64,
    pub member_count: i64,
    pub message_count: i64,
    pub members: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MembershipModel {
    pub status: String,
    pub role: String,
    pub read_seq: i64,
}

/// The expected state of every read model.
#[derive(Debug, Default)]
pub struct Model {
    pub messages: BTreeMap<String, MessageModel>,
    pub rooms: BTreeMap<String, RoomModel>,
    /// (room, user) -> membership
    pub memberships: BTreeMap<(String, String), MembershipModel>,
    /// Users whose last presence was not offline.
    pub online: BTreeSet<String>,
    /// Room events applied, and all events per kind (for the analytics table).
    pub applied_room_events: usize,
    pub events_by_kind: BTreeMap<String, usize>,
    pub event_ids: BTreeSet<String>,
    /// Room events that were not the next of their room (never applied).
    pub conflicts: usize,
    /// username of each registered user (directory).
    pub users: BTreeMap<String, String>,
}

fn role(r: &schemas::events::Role) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Model {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a DomainEvent>) -> Self {
        let mut m = Model::default();
        let mut heads: HashMap<String, (i64, String)> = HashMap::new();
        let mut seen_ids: BTreeSet<String> = BTreeSet::new();
        for event in events {
            let envelope = event.envelope();
            if let (Some(room), Some(seq)) = (envelope.room_id.clone(), envelope.seq) {
                let head = heads.entry(room.clone()).or_insert((0, String::new()));
                if seq != head.0 + 1 {
                    if !(seq <= head.0 && seen_ids.contains(&envelope.event_id)) {
                        m.conflicts += 1;
                    }
                    continue;
                }
                *head = (seq, envelope.event_id.clone());
                m.applied_room_events += 1;
                m.apply_room_event(&room, seq, event);
            } else {
                if seen_ids.contains(&envelope.event_id) {
                    continue;
                }
                m.apply_other(event);
            }
            seen_ids.insert(envelope.event_id.clone());
            m.event_ids.insert(envelope.event_id.clone());
            *m.events_by_kind
                .entry(event.kind().as_str().to_string())
                .or_default() += 1;
        }
        m
    }

    fn apply_room_event(&mut self, room: &str, seq: i64, event: &DomainEvent) {
        use DomainEvent as E;
        let r = self.rooms.entry(room.to_string()).or_default();
        r.last_seq = seq;
        let key = |u: &str| (room.to_string(), u.to_string());
        match event {
            E::RoomCreated(e) => {
                r.name = e.name.clone();
                r.visibility = serde_json::to_value(e.visibility)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                r.members.insert(e.owner_id.clone());
                r.member_count = 1;
                self.memberships.insert(
                    key(&e.owner_id),
                    MembershipModel {
                        status: "member".into(),
                        role: "owner".into(),
                        read_seq: 0,
                    },
                );
            }
            E::RoomUpdated(e) => {
                r.name = e.name.clone();
                r.visibility = serde_json::to_value(e.visibility)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
            }
            E::MemberJoined(e) => {
                if r.members.insert(e.member_id.clone()) {
                    r.member_count += 1;
                }
                let m = self.memberships.entry(key(&e.member_id)).or_default();
                m.status = "member".into();
                m.role = role(&e.role);
            }
            E::MemberLeft(schemas::events::MemberLeft { member_id, .. }) => {
                if r.members.remove(member_id) {
                    r.member_count -= 1;
                }
                self.memberships.entry(key(member_id)).or_default().status = "left".into();
            }
            E::MemberBanned(schemas::events::MemberBanned { member_id, .. }) => {
                if r.members.remove(member_id) {
                    r.member_count -= 1;
                }
                self.memberships.entry(key(member_id)).or_default().status = "banned".into();
            }
            E::MemberInvited(e) => {
                let m = self.memberships.entry(key(&e.invitee_id)).or_default();
                if m.status != "member" {
                    m.status = "invited".into();
                    m.role = "member".into();
                }
            }
            E::MemberRoleChanged(e) => {
                self.memberships.entry(key(&e.member_id)).or_default().role = role(&e.new_role);
            }
            E::MessagePosted(e) => {
                r.message_count += 1;
                self.messages
                    .entry(e.message_id.clone())
                    .or_insert(MessageModel {
                        room_id: room.to_string(),
                        seq,
                        user_id: e.author_id.clone(),
                        content: e.content.clone(),
                        ..MessageModel::default()
                    });
            }
            E::MessageEdited(e) => {
                if let Some(msg) = self.messages.get_mut(&e.message_id)
                    && !msg.deleted
                {
                    msg.content = e.content.clone();
                    msg.edited = true;
                }
            }
            E::MessageDeleted(e) => {
                if let Some(msg) = self.messages.get_mut(&e.message_id)
                    && !msg.deleted
                {
                    msg.deleted = true;
                    msg.content.clear();
                    msg.reactions.clear();
                }
            }
            E::ReactionAdded(e) => {
                if let Some(msg) = self.messages.get_mut(&e.message_id)
                    && !msg.deleted
                {
                    msg.reactions.insert((e.member_id.clone(), e.emoji.clone()));
                }
            }
            E::ReactionRemoved(e) => {
                if let Some(msg) = self.messages.get_mut(&e.message_id)
                    && !msg.deleted
                {
                    msg.reactions
                        .remove(&(e.member_id.clone(), e.emoji.clone()));
                }
            }
            E::ReadMarkerSet(e) => {
                let m = self.memberships.entry(key(&e.member_id)).or_default();
                m.read_seq = m.read_seq.max(e.read_seq);
            }
            E::CallStarted(e) => {
                let media = crate::enum_str(&e.media);
                let topology = crate::enum_str(&e.topology);
                let initiator = BTreeSet::from([e.initiator_id.clone()]);
                self.messages
                    .entry(e.call_id.clone())
                    .or_insert(MessageModel {
                        room_id: room.to_string(),
                        seq,
                        user_id: e.initiator_id.clone(),
                        call: Some(CallModel {
                            media,
                            topology,
                            status: "ringing".into(),
                            participants: initiator.clone(),
                            took_part: initiator,
                            ..CallModel::default()
                        }),
                        ..MessageModel::default()
                    });
            }
            E::CallJoined(e) => {
                if let Some(call) = self.call(&e.call_id) {
                    call.participants.insert(e.member_id.clone());
                    call.took_part.insert(e.member_id.clone());
                    if call.participants.len() > 1 {
                        call.status = "ongoing".into();
                    }
                }
            }
            E::CallLeft(e) => {
                if let Some(call) = self.call(&e.call_id) {
                    call.participants.remove(&e.member_id);
                }
            }
            E::CallEnded(e) => {
                if let Some(call) = self.call(&e.call_id) {
                    call.status = "ended".into();
                    call.participants.clear();
                    call.duration_ms = e.duration_ms;
                    call.reason = e.reason.clone();
                    call.ended_at = Some(e.envelope.occurred_at);
                }
            }
            _ => {}
        }
    }

    fn call(&mut self, call_id: &str) -> Option<&mut CallModel> {
        self.messages.get_mut(call_id)?.call.as_mut()
    }

    fn apply_other(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::PresenceChanged(e) => {
                if let Some(user) = &e.envelope.user_id {
                    if e.status == PresenceStatus::Offline {
                        self.online.remove(user);
                    } else {
                        self.online.insert(user.clone());
                    }
                }
            }
            DomainEvent::UserRegistered(e) => {
                if let Some(user) = &e.envelope.user_id {
                    self.users
                        .entry(user.clone())
                        .or_insert_with(|| e.username.clone());
                }
            }
            _ => {}
        }
    }

    /// Members of `room` who are online.
    pub fn presence(&self, room: &str) -> BTreeSet<String> {
        self.rooms
            .get(room)
            .map(|r| {
                r.members
                    .iter()
                    .filter(|u| self.online.contains(*u))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}
