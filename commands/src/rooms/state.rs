//! Room state as the single writer of a partition sees it, folded from `chat.room-events`.
//!
//! Applying follows the consumer rule of ARCHITECTURE.md: per room only `seq = last + 1` is
//! applied; a record already applied (same `seq`, same `event_id`) is a duplicate and skipped;
//! anything else (another writer's event, a gap) is a conflict the caller reports.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use schemas::DomainEvent;
use schemas::events::{CallMedia, Role, Visibility};
use sha2::{Digest, Sha256};

/// Per-author `client_msg_id`s remembered per room: retries within this window get the first
/// answer. Older keys are forgotten so memory stays bounded (clients retry within seconds).
pub const IDEMPOTENCY_WINDOW: usize = 10_000;
/// Recent `(seq, event_id)` pairs kept to tell a re-read duplicate from a conflict.
const RECENT_EVENTS: usize = 256;

/// A compact stand-in for an id string in the writer's memory: the UUID's 128 bits (every id
/// the platform issues is a UUID), or 128 bits of SHA-256 of anything else the log may hold.
/// Keeping 16 bytes instead of a 36-character string per message, reaction and retry key is
/// what lets a writer hold every message of its rooms.
pub type Key = u128;

pub fn key(id: &str) -> Key {
    match uuid::Uuid::parse_str(id) {
        Ok(u) => u.as_u128(),
        Err(_) => {
            let digest = Sha256::digest(id.as_bytes());
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            u128::from_be_bytes(bytes)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo {
    pub author: Key,
    pub deleted: bool,
}

/// The first answer to a post, for retries with the same `client_msg_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostOutcome {
    pub message_id: uuid::Uuid,
    pub seq: i64,
    pub event_id: uuid::Uuid,
}

/// A room's call as its writer needs it to decide the next call command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    pub initiator: String,
    pub media: CallMedia,
    /// When it started (the `CallStarted` event's time, Unix ms).
    pub started_at: i64,
    /// When a second participant first joined: talk time (and `call_minutes`) counts from
    /// here. `None` while it rings unanswered.
    pub answered_at: Option<i64>,
    pub participants: HashSet<String>,
    /// Members who declined it (or were busy) while it rang.
    pub declined: HashSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RoomState {
    pub room_id: String,
    pub seq: i64,
    pub name: String,
    pub visibility: Option<Visibility>,
    pub topic: Option<String>,
    pub members: HashMap<String, Role>,
    pub banned: HashSet<String>,
    pub invited: HashSet<String>,
    messages: HashMap<Key, MessageInfo>,
    /// (message, member, emoji)
    reactions: HashSet<(Key, Key, Key)>,
    /// Per message, how many members hold each emoji (bounds what a message accumulates).
    reaction_kinds: HashMap<Key, HashMap<Key, u32>>,
    pub read_markers: HashMap<String, i64>,
    /// The room's call, if one is going on (a room has at most one at a time, as a huddle).
    pub call: Option<(String, CallInfo)>,
    /// (author, client_msg_id) -> first answer
    posted: HashMap<(Key, Key), PostOutcome>,
    posted_order: VecDeque<(Key, Key)>,
    recent: VecDeque<(i64, Key)>,
}

impl RoomState {
    pub fn is_private(&self) -> bool {
        self.visibility == Some(Visibility::Private)
    }

    pub fn role_of(&self, user_id: &str) -> Option<Role> {
        self.members.get(user_id).copied()
    }

    pub fn owners(&self) -> usize {
        self.members.values().filter(|r| **r == Role::Owner).count()
    }

    pub fn message(&self, message_id: &str) -> Option<MessageInfo> {
        self.messages.get(&key(message_id)).copied()
    }

    /// The call `call_id` if it is this room's call and still going on.
    pub fn call(&self, call_id: &str) -> Option<&CallInfo> {
        self.call
            .as_ref()
            .filter(|(id, _)| id == call_id)
            .map(|(_, call)| call)
    }

    fn call_mut(&mut self, call_id: &str) -> Option<&mut CallInfo> {
        self.call
            .as_mut()
            .filter(|(id, _)| id == call_id)
            .map(|(_, call)| call)
    }

    /// Whether `emoji` is new on the message and the message already shows `limit` different
    /// reactions.
    pub fn reaction_kinds_full(&self, message_id: &str, emoji: &str, limit: usize) -> bool {
        self.reaction_kinds
            .get(&key(message_id))
            .is_some_and(|kinds| !kinds.contains_key(&key(emoji)) && kinds.len() >= limit)
    }

    pub fn has_reaction(&self, message_id: &str, member_id: &str, emoji: &str) -> bool {
        self.reactions
            .contains(&(key(message_id), key(member_id), key(emoji)))
    }

    /// The answer given to the first post with this author's `client_msg_id`, if remembered.
    pub fn posted(&self, author_id: &str, client_msg_id: &str) -> Option<PostOutcome> {
        self.posted
            .get(&(key(author_id), key(client_msg_id)))
            .copied()
    }

    fn remember_post(&mut self, author_id: &str, client_msg_id: &str, outcome: PostOutcome) {
        let k = (key(author_id), key(client_msg_id));
        if self.posted.insert(k, outcome).is_none() {
            self.posted_order.push_back(k);
            if self.posted_order.len() > IDEMPOTENCY_WINDOW
                && let Some(old) = self.posted_order.pop_front()
            {
                self.posted.remove(&old);
            }
        }
    }

    fn mutate(&mut self, event: &DomainEvent) {
        use DomainEvent as E;
        match event {
            E::RoomCreated(e) => {
                self.name = e.name.clone();
                self.visibility = Some(e.visibility);
                self.topic = e.topic.clone();
                self.members.insert(e.owner_id.clone(), Role::Owner);
            }
            E::RoomUpdated(e) => {
                self.name = e.name.clone();
                self.visibility = Some(e.visibility);
                self.topic = e.topic.clone();
            }
            E::MemberJoined(e) => {
                self.members.insert(e.member_id.clone(), e.role);
                self.invited.remove(&e.member_id);
            }
            E::MemberLeft(e) => {
                self.members.remove(&e.member_id);
                self.read_markers.remove(&e.member_id);
            }
            E::MemberInvited(e) => {
                self.invited.insert(e.invitee_id.clone());
            }
            E::MemberBanned(e) => {
                self.members.remove(&e.member_id);
                self.invited.remove(&e.member_id);
                self.banned.insert(e.member_id.clone());
            }
            E::MemberRoleChanged(e) => {
                self.members.insert(e.member_id.clone(), e.new_role);
            }
            E::MessagePosted(e) => {
                self.messages.insert(
                    key(&e.message_id),
                    MessageInfo {
                        author: key(&e.author_id),
                        deleted: false,
                    },
                );
                let ids = (
                    uuid::Uuid::parse_str(&e.message_id),
                    uuid::Uuid::parse_str(&e.envelope.event_id),
                );
                if let (Some(client_key), Some(seq), (Ok(message_id), Ok(event_id))) =
                    (&e.envelope.idempotency_key, e.envelope.seq, ids)
                {
                    self.remember_post(
                        &e.author_id,
                        client_key,
                        PostOutcome {
                            message_id,
                            seq,
                            event_id,
                        },
                    );
                }
            }
            E::MessageEdited(_) => {}
            E::MessageDeleted(e) => {
                let message = key(&e.message_id);
                if let Some(m) = self.messages.get_mut(&message) {
                    m.deleted = true;
                }
                self.reactions.retain(|(mid, _, _)| *mid != message);
                self.reaction_kinds.remove(&message);
            }
            E::ReactionAdded(e) => {
                let (message, emoji) = (key(&e.message_id), key(&e.emoji));
                if self.reactions.insert((message, key(&e.member_id), emoji)) {
                    *self
                        .reaction_kinds
                        .entry(message)
                        .or_default()
                        .entry(emoji)
                        .or_default() += 1;
                }
            }
            E::ReactionRemoved(e) => {
                let (message, emoji) = (key(&e.message_id), key(&e.emoji));
                if self.reactions.remove(&(message, key(&e.member_id), emoji))
                    && let Some(kinds) = self.reaction_kinds.get_mut(&message)
                    && let Some(holders) = kinds.get_mut(&emoji)
                {
                    *holders -= 1;
                    if *holders == 0 {
                        kinds.remove(&emoji);
                    }
                    if kinds.is_empty() {
                        self.reaction_kinds.remove(&message);
                    }
                }
            }
            E::ReadMarkerSet(e) => {
                self.read_markers.insert(e.member_id.clone(), e.read_seq);
            }
            E::AttachmentUploaded(_) => {}
            E::CallStarted(e) => {
                self.call = Some((
                    e.call_id.clone(),
                    CallInfo {
                        initiator: e.initiator_id.clone(),
                        media: e.media,
                        started_at: e.envelope.occurred_at,
                        answered_at: None,
                        participants: HashSet::from([e.initiator_id.clone()]),
                        declined: HashSet::new(),
                    },
                ));
            }
            E::CallJoined(e) => {
                if let Some(call) = self.call_mut(&e.call_id) {
                    call.participants.insert(e.member_id.clone());
                    if call.answered_at.is_none() && call.participants.len() > 1 {
                        call.answered_at = Some(e.envelope.occurred_at);
                    }
                }
            }
            E::CallLeft(e) => {
                if let Some(call) = self.call_mut(&e.call_id)
                    && !call.participants.remove(&e.member_id)
                {
                    // Left without having joined: a decline (or busy) while it rang.
                    call.declined.insert(e.member_id.clone());
                }
            }
            E::CallEnded(e) => {
                if self.call.as_ref().is_some_and(|(id, _)| *id == e.call_id) {
                    self.call = None;
                }
            }
            E::UserRegistered(_)
            | E::UserProfileUpdated(_)
            | E::SessionRevoked(_)
            | E::PresenceChanged(_) => {}
        }
    }
}

/// What applying one record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// Already applied (same room, seq and event id): a re-read, skipped.
    Duplicate,
    /// Not the next event of its room: another writer, a gap, or a foreign record.
    Conflict(String),
}

/// The rooms of one partition.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: HashMap<String, RoomState>,
    /// Calls ringing unanswered, by (start time, room): the writer ends each one the ring
    /// timeout after its start (`Command::RingTimeout`), and asks for the earliest after every
    /// command, so the order is kept rather than searched. Kept from the log, so a writer that
    /// takes a partition over arms the calls its predecessor left ringing.
    ringing: BTreeMap<(i64, String), String>,
    /// When each room's ringing call started (its key in `ringing`).
    ringing_since: HashMap<String, i64>,
}

impl Rooms {
    pub fn get(&self, room_id: &str) -> Option<&RoomState> {
        self.rooms.get(room_id)
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    #[cfg(test)]
    pub fn get_mut_for_test(&mut self, room_id: &str) -> &mut RoomState {
        self.rooms.get_mut(room_id).expect("room")
    }

    /// The calls that have rung `ring_ms` or longer at `now_ms`, as (room, call).
    pub fn rung_out(&self, ring_ms: i64, now_ms: i64) -> Vec<(String, String)> {
        self.ringing
            .iter()
            .take_while(|((started, _), _)| started + ring_ms <= now_ms)
            .map(|((_, room), call)| (room.clone(), call.clone()))
            .collect()
    }

    /// When the next ringing call rings out (Unix ms), if any rings.
    pub fn next_ring_out(&self, ring_ms: i64) -> Option<i64> {
        self.ringing
            .first_key_value()
            .map(|((started, _), _)| started + ring_ms)
    }

    pub fn apply(&mut self, event: &DomainEvent) -> Applied {
        let envelope = event.envelope();
        let (Some(room_id), Some(seq)) = (envelope.room_id.as_deref(), envelope.seq) else {
            return Applied::Conflict(format!("{} without room_id/seq", event.kind().as_str()));
        };
        let state = match self.rooms.get_mut(room_id) {
            Some(state) => state,
            None => {
                if !matches!(event, DomainEvent::RoomCreated(_)) || seq != 1 {
                    return Applied::Conflict(format!(
                        "{} seq {seq} for unknown room {room_id}",
                        event.kind().as_str()
                    ));
                }
                self.rooms
                    .entry(room_id.to_string())
                    .or_insert_with(|| RoomState {
                        room_id: room_id.to_string(),
                        ..RoomState::default()
                    })
            }
        };
        if seq != state.seq + 1 {
            if seq <= state.seq
                && state
                    .recent
                    .iter()
                    .any(|(s, id)| *s == seq && *id == key(&envelope.event_id))
            {
                return Applied::Duplicate;
            }
            return Applied::Conflict(format!(
                "room {room_id}: got seq {seq} ({}) after {}",
                envelope.event_id, state.seq
            ));
        }
        state.mutate(event);
        state.seq = seq;
        if let DomainEvent::CallStarted(_)
        | DomainEvent::CallJoined(_)
        | DomainEvent::CallEnded(_) = event
        {
            if let Some(started) = self.ringing_since.remove(room_id) {
                self.ringing.remove(&(started, room_id.to_string()));
            }
            if let Some((call_id, call)) = &state.call
                && call.answered_at.is_none()
            {
                self.ringing_since
                    .insert(room_id.to_string(), call.started_at);
                self.ringing
                    .insert((call.started_at, room_id.to_string()), call_id.clone());
            }
        }
        state.recent.push_back((seq, key(&envelope.event_id)));
        if state.recent.len() > RECENT_EVENTS {
            state.recent.pop_front();
        }
        Applied::Applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Envelope;
    use schemas::events::*;

    fn created(room: &str) -> DomainEvent {
        RoomCreated {
            envelope: Envelope::for_room(room, 1, Some("owner".into())),
            name: "r".into(),
            visibility: Visibility::Public,
            topic: None,
            owner_id: "owner".into(),
        }
        .into()
    }

    fn post(room: &str, seq: i64, key: &str) -> DomainEvent {
        let mut envelope = Envelope::for_room(room, seq, Some("owner".into()));
        envelope.idempotency_key = Some(key.into());
        MessagePosted {
            envelope,
            message_id: uuid::Uuid::now_v7().to_string(),
            author_id: "owner".into(),
            content: "hi".into(),
            message_type: MessageType::Text,
            reply_to: None,
            attachments: vec![],
        }
        .into()
    }

    #[test]
    fn only_the_next_seq_applies_and_rereads_are_duplicates() {
        let mut rooms = Rooms::default();
        let c = created("r1");
        assert_eq!(rooms.apply(&c), Applied::Applied);
        let p2 = post("r1", 2, "k2");
        assert_eq!(rooms.apply(&p2), Applied::Applied);
        assert_eq!(rooms.apply(&p2), Applied::Duplicate);
        assert_eq!(rooms.apply(&c), Applied::Duplicate);
        // Same seq, other event: a second writer.
        assert!(matches!(
            rooms.apply(&post("r1", 2, "other")),
            Applied::Conflict(_)
        ));
        // A gap.
        assert!(matches!(
            rooms.apply(&post("r1", 4, "k4")),
            Applied::Conflict(_)
        ));
        // Events for a room that was never created.
        assert!(matches!(
            rooms.apply(&post("r2", 1, "k")),
            Applied::Conflict(_)
        ));
        let state = rooms.get("r1").unwrap();
        assert_eq!(state.seq, 2);
        assert_eq!(state.posted("owner", "k2").unwrap().seq, 2);
        assert_eq!(state.role_of("owner"), Some(Role::Owner));
    }

    #[test]
    fn the_idempotency_window_is_bounded() {
        let mut rooms = Rooms::default();
        rooms.apply(&created("r"));
        for seq in 2..(IDEMPOTENCY_WINDOW as i64 + 12) {
            assert_eq!(
                rooms.apply(&post("r", seq, &format!("k{seq}"))),
                Applied::Applied
            );
        }
        let state = rooms.get("r").unwrap();
        assert!(
            state.posted("owner", "k2").is_none(),
            "oldest key forgotten"
        );
        assert!(
            state
                .posted("owner", &format!("k{}", IDEMPOTENCY_WINDOW as i64 + 11))
                .is_some()
        );
        assert_eq!(state.posted.len(), IDEMPOTENCY_WINDOW);
    }
}
