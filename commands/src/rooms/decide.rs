//! Command rules: given a room's state and an authenticated actor, a command either fails,
//! changes nothing (idempotent repeats), replays a remembered answer, or yields the events to
//! append. Pure: no I/O, so every rule is unit-tested here and the writer only sequences.

use schemas::events::*;
use schemas::{DomainEvent, Envelope};
use serde::Serialize;

use super::calls;
use super::state::{MessageInfo, RoomState, key};
use crate::error::CommandError;

#[derive(Debug, Clone)]
pub struct Actor {
    pub user_id: String,
    pub username: String,
}

/// An uploaded file, as answered to its uploader and as a post refers to it (the writer turns
/// it into an `AttachmentUploaded` event with the post's envelope).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FileInfo {
    pub file_id: String,
    pub filename: String,
    pub size: i64,
    pub mime_type: String,
    pub sha256: String,
    pub url: String,
}

/// A validated command (inputs already passed `rooms::validate`).
#[derive(Debug, Clone)]
pub enum Command {
    CreateRoom {
        name: String,
        visibility: Visibility,
        topic: Option<String>,
    },
    UpdateRoom {
        name: Option<String>,
        topic: Option<Option<String>>,
        visibility: Option<Visibility>,
    },
    Join,
    Leave,
    Invite {
        user_id: String,
    },
    Ban {
        user_id: String,
        reason: Option<String>,
    },
    SetRole {
        user_id: String,
        role: Role,
    },
    Post {
        client_msg_id: String,
        content: String,
        reply_to: Option<String>,
        attachments: Vec<FileInfo>,
    },
    Edit {
        message_id: String,
        content: String,
    },
    Delete {
        message_id: String,
    },
    React {
        message_id: String,
        emoji: String,
    },
    Unreact {
        message_id: String,
        emoji: String,
    },
    MarkRead {
        seq: i64,
    },
    StartCall {
        media: CallMedia,
    },
    JoinCall {
        call_id: String,
    },
    LeaveCall {
        call_id: String,
        reason: LeaveReason,
    },
    /// Declining a ringing call (or being busy in another): recorded so the caller is told,
    /// and a call every other member declined ends at once instead of ringing out.
    DeclineCall {
        call_id: String,
        busy: bool,
    },
    /// Ends the call for everyone (its caller, moderators, the owner).
    EndCall {
        call_id: String,
    },
    /// Issued by the partition writer itself when a call rang unanswered for the ring timeout.
    RingTimeout {
        call_id: String,
    },
}

/// Why a participant leaves a call (`CallLeft.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    HungUp,
    /// Every socket of the participant dropped and none came back in time.
    Disconnected,
}

impl LeaveReason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            LeaveReason::HungUp => "hung_up",
            LeaveReason::Disconnected => "disconnected",
        }
    }
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateRoom { .. } => "create_room",
            Command::UpdateRoom { .. } => "update_room",
            Command::Join => "join",
            Command::Leave => "leave",
            Command::Invite { .. } => "invite",
            Command::Ban { .. } => "ban",
            Command::SetRole { .. } => "set_role",
            Command::Post { .. } => "post",
            Command::Edit { .. } => "edit",
            Command::Delete { .. } => "delete",
            Command::React { .. } => "react",
            Command::Unreact { .. } => "unreact",
            Command::MarkRead { .. } => "mark_read",
            Command::StartCall { .. } => "start_call",
            Command::JoinCall { .. } => "join_call",
            Command::LeaveCall { .. } => "leave_call",
            Command::DeclineCall { .. } => "decline_call",
            Command::EndCall { .. } => "end_call",
            Command::RingTimeout { .. } => "ring_timeout",
        }
    }
}

/// The answer of a command. `seq` / `event_id` are those of the last event written (absent
/// when the command changed nothing); `message_id` for posts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Outcome {
    pub room_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The call a call command concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    pub seq: Option<i64>,
    pub event_id: Option<String>,
}

#[derive(Debug)]
pub enum Decision {
    /// Append these (consecutive seqs), answer with this outcome once acknowledged.
    Emit(Vec<DomainEvent>, Outcome),
    /// Nothing to change (the state already is what was asked).
    Noop(Outcome),
}

/// Decides `command` by `actor` on `room` (`None`: no such room yet).
pub fn decide(
    room_id: &str,
    room: Option<&RoomState>,
    actor: &Actor,
    command: Command,
) -> Result<Decision, CommandError> {
    let Some(room) = room else {
        return match command {
            Command::CreateRoom {
                name,
                visibility,
                topic,
            } => {
                let e = Emitter::new(room_id, 0, actor);
                let event = RoomCreated {
                    envelope: e.envelope(1),
                    name,
                    visibility,
                    topic,
                    owner_id: actor.user_id.clone(),
                };
                Ok(e.emit(vec![event.into()], None))
            }
            _ => Err(CommandError::NotFound("room")),
        };
    };
    let e = Emitter::new(room_id, room.seq, actor);
    let me = actor.user_id.as_str();
    match command {
        Command::CreateRoom { .. } => Err(CommandError::Conflict(
            "room_exists",
            "the room already exists".into(),
        )),
        Command::UpdateRoom {
            name,
            topic,
            visibility,
        } => update_room(&e, room, me, name, topic, visibility),
        Command::Join => join(&e, room, me),
        Command::Leave => leave(&e, room, me),
        Command::Invite { user_id } => invite(&e, room, me, user_id),
        Command::Ban { user_id, reason } => ban(&e, room, me, user_id, reason),
        Command::SetRole {
            user_id,
            role: new_role,
        } => set_role(&e, room, me, user_id, new_role),
        Command::Post {
            client_msg_id,
            content,
            reply_to,
            attachments,
        } => post(&e, room, me, client_msg_id, content, reply_to, attachments),
        Command::Edit {
            message_id,
            content,
        } => edit(&e, room, me, message_id, content),
        Command::Delete { message_id } => delete(&e, room, me, message_id),
        Command::React { message_id, emoji } => reaction(&e, room, me, message_id, emoji, true),
        Command::Unreact { message_id, emoji } => reaction(&e, room, me, message_id, emoji, false),
        Command::MarkRead { seq } => mark_read(&e, room, me, seq),
        Command::StartCall { media } => calls::start(&e, room, me, media),
        Command::JoinCall { call_id } => calls::join(&e, room, me, call_id),
        Command::LeaveCall { call_id, reason } => calls::leave(&e, room, me, call_id, reason),
        Command::DeclineCall { call_id, busy } => calls::decline(&e, room, me, call_id, busy),
        Command::EndCall { call_id } => calls::end(&e, room, me, call_id),
        Command::RingTimeout { call_id } => calls::ring_timeout(&e, room, call_id),
    }
}

fn update_room(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    name: Option<String>,
    topic: Option<Option<String>>,
    visibility: Option<Visibility>,
) -> Result<Decision, CommandError> {
    let role = require_member(room, me)?;
    if role > Role::Moderator {
        return Err(forbidden(
            "not_allowed",
            "only owners and moderators can change the room",
        ));
    }
    if visibility.is_some_and(|v| Some(v) != room.visibility) && role != Role::Owner {
        return Err(forbidden(
            "not_allowed",
            "only owners can change the visibility",
        ));
    }
    let new_name = name.unwrap_or_else(|| room.name.clone());
    let new_topic = topic.unwrap_or_else(|| room.topic.clone());
    let new_visibility = visibility.or(room.visibility).unwrap_or(Visibility::Public);
    if new_name == room.name && new_topic == room.topic && Some(new_visibility) == room.visibility {
        return Ok(e.noop());
    }
    let event = RoomUpdated {
        envelope: e.envelope(1),
        name: new_name,
        visibility: new_visibility,
        topic: new_topic,
    };
    Ok(e.emit(vec![event.into()], None))
}

fn join(e: &Emitter, room: &RoomState, me: &str) -> Result<Decision, CommandError> {
    if room.banned.contains(me) {
        return Err(hidden_or(
            room,
            forbidden("banned", "you are banned from this room"),
        ));
    }
    if room.members.contains_key(me) {
        return Ok(e.noop());
    }
    if room.is_private() && !room.invited.contains(me) {
        return Err(CommandError::NotFound("room"));
    }
    let event = MemberJoined {
        envelope: e.envelope(1),
        member_id: me.to_string(),
        role: Role::Member,
    };
    Ok(e.emit(vec![event.into()], None))
}

fn leave(e: &Emitter, room: &RoomState, me: &str) -> Result<Decision, CommandError> {
    if !room.members.contains_key(me) {
        return if room.is_private() {
            Err(CommandError::NotFound("room"))
        } else {
            Ok(e.noop())
        };
    }
    if room.role_of(me) == Some(Role::Owner) && room.owners() == 1 && room.members.len() > 1 {
        return Err(CommandError::Conflict(
            "last_owner",
            "you are the only owner; make another member owner before leaving".into(),
        ));
    }
    let event = MemberLeft {
        envelope: e.envelope(1),
        member_id: me.to_string(),
        reason: None,
    };
    let mut events = vec![event.into()];
    calls::drop_participant(e, room, me, "left_room", &mut events);
    Ok(e.emit(events, None))
}

fn invite(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    user_id: String,
) -> Result<Decision, CommandError> {
    let role = require_member(room, me)?;
    if !room.is_private() {
        return Err(CommandError::invalid(
            "public rooms need no invite; anyone can join",
        ));
    }
    if role > Role::Moderator {
        return Err(forbidden(
            "not_allowed",
            "only owners and moderators can invite",
        ));
    }
    if room.banned.contains(&user_id) {
        return Err(CommandError::Conflict(
            "user_banned",
            "that user is banned from this room".into(),
        ));
    }
    if room.members.contains_key(&user_id) || room.invited.contains(&user_id) {
        return Ok(e.noop());
    }
    let event = MemberInvited {
        envelope: e.envelope(1),
        invitee_id: user_id,
    };
    Ok(e.emit(vec![event.into()], None))
}

fn ban(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    user_id: String,
    reason: Option<String>,
) -> Result<Decision, CommandError> {
    let role = require_member(room, me)?;
    if role > Role::Moderator {
        return Err(forbidden(
            "not_allowed",
            "only owners and moderators can ban",
        ));
    }
    if user_id == me {
        return Err(CommandError::invalid("you cannot ban yourself"));
    }
    if room.banned.contains(&user_id) {
        return Ok(e.noop());
    }
    // Nobody bans an equal or a superior: moderators ban members, owners ban moderators.
    if let Some(target) = room.role_of(&user_id)
        && target <= role
    {
        return Err(forbidden(
            "not_allowed",
            "you can only ban members below your role",
        ));
    }
    let event = MemberBanned {
        envelope: e.envelope(1),
        member_id: user_id.clone(),
        reason,
    };
    let mut events = vec![event.into()];
    calls::drop_participant(e, room, &user_id, "banned", &mut events);
    Ok(e.emit(events, None))
}

fn set_role(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    user_id: String,
    new_role: Role,
) -> Result<Decision, CommandError> {
    let role = require_member(room, me)?;
    if role != Role::Owner {
        return Err(forbidden("not_allowed", "only owners can change roles"));
    }
    let Some(old_role) = room.role_of(&user_id) else {
        return Err(CommandError::NotFound("member"));
    };
    if old_role == new_role {
        return Ok(e.noop());
    }
    if old_role == Role::Owner && room.owners() == 1 {
        return Err(CommandError::Conflict(
            "last_owner",
            "a room needs at least one owner".into(),
        ));
    }
    let event = MemberRoleChanged {
        envelope: e.envelope(1),
        member_id: user_id,
        old_role,
        new_role,
    };
    Ok(e.emit(vec![event.into()], None))
}

fn post(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    client_msg_id: String,
    content: String,
    reply_to: Option<String>,
    attachments: Vec<FileInfo>,
) -> Result<Decision, CommandError> {
    if let Some(first) = room.posted(me, &client_msg_id) {
        // A retry: the first answer, nothing written.
        return Ok(Decision::Noop(Outcome {
            room_id: e.room_id.to_string(),
            message_id: Some(first.message_id.to_string()),
            call_id: None,
            seq: Some(first.seq),
            event_id: Some(first.event_id.to_string()),
        }));
    }
    require_member(room, me)?;
    if let Some(parent) = &reply_to
        && room.message(parent).is_none_or(|m| m.deleted)
    {
        return Err(CommandError::invalid(
            "reply_to names no message of this room",
        ));
    }
    let message_type = match attachments.first() {
        None => MessageType::Text,
        Some(_)
            if attachments
                .iter()
                .all(|a| a.mime_type.starts_with("image/")) =>
        {
            MessageType::Image
        }
        Some(_) => MessageType::File,
    };
    let mut events: Vec<DomainEvent> = Vec::with_capacity(attachments.len() + 1);
    let mut refs = Vec::with_capacity(attachments.len());
    for (i, file) in attachments.into_iter().enumerate() {
        refs.push(Attachment {
            file_id: file.file_id.clone(),
            filename: file.filename.clone(),
            size: file.size,
            mime_type: file.mime_type.clone(),
            url: file.url.clone(),
        });
        events.push(
            AttachmentUploaded {
                envelope: e.envelope(i as i64 + 1),
                file_id: file.file_id,
                uploader_id: me.to_string(),
                filename: file.filename,
                size: file.size,
                mime_type: file.mime_type,
                sha256: file.sha256,
                url: file.url,
            }
            .into(),
        );
    }
    let mut envelope = e.envelope(events.len() as i64 + 1);
    envelope.idempotency_key = Some(client_msg_id);
    let message_id = uuid::Uuid::now_v7().to_string();
    events.push(
        MessagePosted {
            envelope,
            message_id: message_id.clone(),
            author_id: me.to_string(),
            content,
            message_type,
            reply_to,
            attachments: refs,
        }
        .into(),
    );
    Ok(e.emit(events, Some(message_id)))
}

fn edit(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    message_id: String,
    content: String,
) -> Result<Decision, CommandError> {
    require_member(room, me)?;
    let message = live_message(room, &message_id)?;
    if message.author != key(me) {
        return Err(forbidden(
            "not_author",
            "only the author can edit a message",
        ));
    }
    let event = MessageEdited {
        envelope: e.envelope(1),
        message_id: message_id.clone(),
        content,
    };
    Ok(e.emit(vec![event.into()], Some(message_id)))
}

fn delete(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    message_id: String,
) -> Result<Decision, CommandError> {
    let role = require_member(room, me)?;
    let Some(message) = room.message(&message_id) else {
        return Err(CommandError::NotFound("message"));
    };
    if message.author != key(me) && role > Role::Moderator {
        return Err(forbidden(
            "not_allowed",
            "only the author or a moderator can delete a message",
        ));
    }
    if message.deleted {
        return Ok(e.noop());
    }
    let event = MessageDeleted {
        envelope: e.envelope(1),
        message_id: message_id.clone(),
    };
    Ok(e.emit(vec![event.into()], Some(message_id)))
}

/// Different emoji one message may show (as chat products do: Discord 20, Slack 23), so one
/// user cannot grow a message without bound; each member holds at most one of each.
pub const MAX_REACTION_KINDS: usize = 20;

/// Adds (`add`) or removes the caller's reaction; asking for what already is changes nothing.
fn reaction(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    message_id: String,
    emoji: String,
    add: bool,
) -> Result<Decision, CommandError> {
    require_member(room, me)?;
    live_message(room, &message_id)?;
    if room.has_reaction(&message_id, me, &emoji) == add {
        return Ok(e.noop());
    }
    if add && room.reaction_kinds_full(&message_id, &emoji, MAX_REACTION_KINDS) {
        return Err(CommandError::Conflict(
            "too_many_reactions",
            format!(
                "a message shows at most {MAX_REACTION_KINDS} different reactions; add one of those"
            ),
        ));
    }
    let (envelope, member_id, id) = (e.envelope(1), me.to_string(), message_id.clone());
    let event: DomainEvent = if add {
        ReactionAdded {
            envelope,
            message_id: id,
            member_id,
            emoji,
        }
        .into()
    } else {
        ReactionRemoved {
            envelope,
            message_id: id,
            member_id,
            emoji,
        }
        .into()
    };
    Ok(e.emit(vec![event], Some(message_id)))
}

fn mark_read(e: &Emitter, room: &RoomState, me: &str, seq: i64) -> Result<Decision, CommandError> {
    require_member(room, me)?;
    if seq < 0 || seq > room.seq {
        return Err(CommandError::invalid(format!(
            "seq must be between 0 and {}",
            room.seq
        )));
    }
    if room.read_markers.get(me).is_some_and(|&read| read >= seq) {
        return Ok(e.noop());
    }
    let event = ReadMarkerSet {
        envelope: e.envelope(1),
        member_id: me.to_string(),
        read_seq: seq,
    };
    Ok(e.emit(vec![event.into()], None))
}

pub(super) fn forbidden(code: &'static str, message: &str) -> CommandError {
    CommandError::Forbidden(code, message.to_string())
}

/// A private room hides itself from everyone outside it (404), public rooms explain (403).
fn hidden_or(room: &RoomState, visible_error: CommandError) -> CommandError {
    if room.is_private() {
        CommandError::NotFound("room")
    } else {
        visible_error
    }
}

/// The caller's role, or the error for a non-member / banned user.
pub(super) fn require_member(room: &RoomState, user_id: &str) -> Result<Role, CommandError> {
    if let Some(role) = room.role_of(user_id) {
        return Ok(role);
    }
    if room.banned.contains(user_id) {
        return Err(hidden_or(
            room,
            forbidden("banned", "you are banned from this room"),
        ));
    }
    Err(hidden_or(
        room,
        forbidden("not_a_member", "join the room first"),
    ))
}

fn live_message(room: &RoomState, message_id: &str) -> Result<MessageInfo, CommandError> {
    room.message(message_id)
        .filter(|m| !m.deleted)
        .ok_or(CommandError::NotFound("message"))
}

/// Builds envelopes with consecutive seqs after `base_seq`.
pub(super) struct Emitter<'a> {
    room_id: &'a str,
    base_seq: i64,
    actor: &'a Actor,
    correlation_id: String,
}

impl<'a> Emitter<'a> {
    fn new(room_id: &'a str, base_seq: i64, actor: &'a Actor) -> Self {
        Self {
            room_id,
            base_seq,
            actor,
            correlation_id: uuid::Uuid::now_v7().to_string(),
        }
    }

    /// Envelope of the `n`-th (1-based) event of this command.
    pub(super) fn envelope(&self, n: i64) -> Envelope {
        let mut envelope = Envelope::for_room(
            self.room_id,
            self.base_seq + n,
            Some(self.actor.user_id.clone()),
        );
        envelope.correlation_id = Some(self.correlation_id.clone());
        envelope
    }

    pub(super) fn emit(&self, events: Vec<DomainEvent>, message_id: Option<String>) -> Decision {
        let last = events.last().map(|e| e.envelope().clone());
        Decision::Emit(
            events,
            Outcome {
                room_id: self.room_id.to_string(),
                message_id,
                call_id: None,
                seq: last.as_ref().and_then(|e| e.seq),
                event_id: last.map(|e| e.event_id),
            },
        )
    }

    pub(super) fn noop(&self) -> Decision {
        Decision::Noop(Outcome {
            room_id: self.room_id.to_string(),
            message_id: None,
            call_id: None,
            seq: None,
            event_id: None,
        })
    }
}
