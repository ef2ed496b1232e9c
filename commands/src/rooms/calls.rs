//! Call rules. A room has at most one call at a time (a huddle the whole room can join, as
//! chat products do): members start and join it, participants leave it, members it rings for
//! decline it. It ends when its last participant leaves, when every member it rang declined,
//! when it rings unanswered for the ring timeout, or when its caller or a moderator ends it for
//! everyone. Talk time (`CallEnded.duration_ms`, and so `call_minutes`) counts from the moment
//! a second participant joined.

use schemas::DomainEvent;
use schemas::events::{
    CallEnded, CallJoined, CallLeft, CallMedia, CallStarted, CallTopology, Role,
};

use super::decide::{Decision, Emitter, LeaveReason, forbidden, require_member};
use super::state::{CallInfo, RoomState};
use crate::error::CommandError;

/// Rooms of at least this many members call through the SFU: a mesh of n participants sends
/// every stream n-1 times, which a phone's uplink cannot carry past two. Decided once, at the
/// start (moving a running call between topologies would renegotiate every connection).
pub const SFU_FROM_MEMBERS: usize = 3;

fn topology(room: &RoomState) -> CallTopology {
    if room.members.len() >= SFU_FROM_MEMBERS {
        CallTopology::Sfu
    } else {
        CallTopology::P2p
    }
}

/// `CallEnded.reason` values (API.md lists them).
mod ended {
    pub const HUNG_UP: &str = "hung_up";
    pub const UNANSWERED: &str = "unanswered";
    pub const DECLINED: &str = "declined";
    pub const EVERYONE_LEFT: &str = "everyone_left";
    pub const DISCONNECTED: &str = "disconnected";
}

pub(super) fn start(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    media: CallMedia,
) -> Result<Decision, CommandError> {
    require_member(room, me)?;
    if let Some((call_id, _)) = &room.call {
        return Err(CommandError::Conflict(
            "call_in_progress",
            format!("a call is already going on in this room; join it (call_id {call_id})"),
        ));
    }
    let call_id = uuid::Uuid::now_v7().to_string();
    let event = CallStarted {
        envelope: e.envelope(1),
        call_id: call_id.clone(),
        initiator_id: me.to_string(),
        media,
        topology: topology(room),
    };
    Ok(about(e.emit(vec![event.into()], None), call_id))
}

pub(super) fn join(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    call_id: String,
) -> Result<Decision, CommandError> {
    require_member(room, me)?;
    let call = ongoing(room, &call_id)?;
    if call.participants.contains(me) {
        return Ok(about(e.noop(), call_id));
    }
    let event = CallJoined {
        envelope: e.envelope(1),
        call_id: call_id.clone(),
        member_id: me.to_string(),
    };
    Ok(about(e.emit(vec![event.into()], None), call_id))
}

pub(super) fn leave(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    call_id: String,
    reason: LeaveReason,
) -> Result<Decision, CommandError> {
    require_member(room, me)?;
    let call = ongoing(room, &call_id)?;
    if !call.participants.contains(me) {
        return Ok(about(e.noop(), call_id));
    }
    let mut events = Vec::with_capacity(2);
    left(e, &call_id, call, me, reason.as_str(), &mut events);
    Ok(about(e.emit(events, None), call_id))
}

pub(super) fn decline(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    call_id: String,
    busy: bool,
) -> Result<Decision, CommandError> {
    require_member(room, me)?;
    let call = ongoing(room, &call_id)?;
    if call.participants.contains(me) {
        return Err(CommandError::Conflict(
            "in_call",
            "you are in this call; leave it instead".into(),
        ));
    }
    // Once answered, a call no longer rings: declining it changes nothing on the log.
    if call.answered_at.is_some() || call.declined.contains(me) {
        return Ok(about(e.noop(), call_id));
    }
    let mut events: Vec<DomainEvent> = vec![
        CallLeft {
            envelope: e.envelope(1),
            call_id: call_id.clone(),
            member_id: me.to_string(),
            reason: Some(if busy { "busy" } else { "declined" }.into()),
        }
        .into(),
    ];
    let everyone_declined = room
        .members
        .keys()
        .all(|m| m == me || call.participants.contains(m) || call.declined.contains(m.as_str()));
    if everyone_declined {
        events.push(ended(e, 2, &call_id, call, ended::DECLINED));
    }
    Ok(about(e.emit(events, None), call_id))
}

pub(super) fn end(
    e: &Emitter,
    room: &RoomState,
    me: &str,
    call_id: String,
) -> Result<Decision, CommandError> {
    let role = require_member(room, me)?;
    let call = ongoing(room, &call_id)?;
    if call.initiator != me && role > Role::Moderator {
        return Err(forbidden(
            "not_allowed",
            "only the caller, moderators and owners can end a call for everyone",
        ));
    }
    let event = ended(e, 1, &call_id, call, ended::HUNG_UP);
    Ok(about(e.emit(vec![event], None), call_id))
}

/// The writer's own command: nobody answered within the ring timeout.
pub(super) fn ring_timeout(
    e: &Emitter,
    room: &RoomState,
    call_id: String,
) -> Result<Decision, CommandError> {
    match room.call(&call_id) {
        Some(call) if call.answered_at.is_none() => {
            let mut event = ended(e, 1, &call_id, call, ended::UNANSWERED);
            if let DomainEvent::CallEnded(ended) = &mut event {
                ended.envelope.actor_id = None;
            }
            Ok(about(e.emit(vec![event], None), call_id))
        }
        _ => Ok(about(e.noop(), call_id)),
    }
}

/// A member who leaves the room or is banned from it leaves its call too (after `events`).
pub(super) fn drop_participant(
    e: &Emitter,
    room: &RoomState,
    member: &str,
    reason: &str,
    events: &mut Vec<DomainEvent>,
) {
    if let Some((call_id, call)) = &room.call
        && call.participants.contains(member)
    {
        left(e, call_id, call, member, reason, events);
    }
}

/// `CallLeft` for `member` (after `events`), and `CallEnded` if nobody is left.
fn left(
    e: &Emitter,
    call_id: &str,
    call: &CallInfo,
    member: &str,
    reason: &str,
    events: &mut Vec<DomainEvent>,
) {
    let n = events.len() as i64;
    events.push(
        CallLeft {
            envelope: e.envelope(n + 1),
            call_id: call_id.to_string(),
            member_id: member.to_string(),
            reason: Some(reason.to_string()),
        }
        .into(),
    );
    if call.participants.len() == 1 {
        let why = if reason == LeaveReason::Disconnected.as_str() {
            ended::DISCONNECTED
        } else if call.answered_at.is_some() {
            ended::EVERYONE_LEFT
        } else {
            // The caller gave up before anyone answered.
            ended::HUNG_UP
        };
        events.push(ended(e, n + 2, call_id, call, why));
    }
}

fn ended(e: &Emitter, n: i64, call_id: &str, call: &CallInfo, reason: &str) -> DomainEvent {
    let envelope = e.envelope(n);
    let duration_ms = call
        .answered_at
        .map(|answered| (envelope.occurred_at - answered).max(0))
        .unwrap_or(0);
    CallEnded {
        envelope,
        call_id: call_id.to_string(),
        duration_ms,
        reason: Some(reason.to_string()),
    }
    .into()
}

fn ongoing<'r>(room: &'r RoomState, call_id: &str) -> Result<&'r CallInfo, CommandError> {
    room.call(call_id).ok_or(CommandError::NotFound("call"))
}

/// Names the call in the command's answer.
fn about(decision: Decision, call_id: String) -> Decision {
    match decision {
        Decision::Emit(events, mut outcome) => {
            outcome.call_id = Some(call_id);
            Decision::Emit(events, outcome)
        }
        Decision::Noop(mut outcome) => {
            outcome.call_id = Some(call_id);
            Decision::Noop(outcome)
        }
    }
}
