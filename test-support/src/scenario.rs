//! Synthetic event streams, written as the commands tier would write them (gap-free seqs per
//! room, UUID v7 ids), for tests of the read side that need exact control of the log.

use schemas::events::*;
use schemas::{DomainEvent, Envelope};

pub struct Scenario {
    pub events: Vec<DomainEvent>,
    pub rooms: Vec<String>,
    pub users: Vec<String>,
}

fn id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// `rooms` rooms with `members` members each and `messages` posts per room, with edits,
/// deletes, reactions, read markers, calls (from the 11th post on), a leave and a ban per room, presence changes and the
/// users' registrations. `start_ms` is the time of the first event; events are 1 s apart
/// within a room.
pub fn chat(rooms: usize, members: usize, messages: usize, start_ms: i64) -> Scenario {
    let users: Vec<String> = (0..rooms * members).map(|_| id()).collect();
    let mut events: Vec<DomainEvent> = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let mut envelope = Envelope::for_user(user.clone(), Some(user.clone()));
        envelope.occurred_at = start_ms;
        events.push(
            UserRegistered {
                envelope,
                username: format!("user{i}"),
                display_name: None,
            }
            .into(),
        );
    }
    let mut room_ids = Vec::new();
    for r in 0..rooms {
        let room = id();
        room_ids.push(room.clone());
        let members: Vec<&String> = users[r * members..(r + 1) * members].iter().collect();
        let mut seq = 0i64;
        let next = |actor: &str, seq: &mut i64| {
            *seq += 1;
            let mut e = Envelope::for_room(room.clone(), *seq, Some(actor.to_string()));
            e.occurred_at = start_ms + *seq * 1000;
            e
        };
        let owner = members[0].clone();
        events.push(
            RoomCreated {
                envelope: next(&owner, &mut seq),
                name: format!("room {r}"),
                visibility: if r % 3 == 2 {
                    Visibility::Private
                } else {
                    Visibility::Public
                },
                topic: None,
                owner_id: owner.clone(),
            }
            .into(),
        );
        for m in &members[1..] {
            events.push(
                MemberJoined {
                    envelope: next(m, &mut seq),
                    member_id: (*m).clone(),
                    role: Role::Member,
                }
                .into(),
            );
        }
        for i in 0..messages {
            let author = members[i % members.len()];
            let message_id = id();
            let mut envelope = next(author, &mut seq);
            envelope.idempotency_key = Some(format!("k{i}"));
            events.push(
                MessagePosted {
                    envelope,
                    message_id: message_id.clone(),
                    author_id: author.clone(),
                    content: format!("message {i} in room {r}: {}", "lorem ipsum ".repeat(i % 7)),
                    message_type: MessageType::Text,
                    reply_to: None,
                    attachments: vec![],
                }
                .into(),
            );
            if i % 9 == 0 {
                events.push(
                    MessageEdited {
                        envelope: next(author, &mut seq),
                        message_id: message_id.clone(),
                        content: format!("edited {i}"),
                    }
                    .into(),
                );
            }
            if i % 5 == 0 {
                let fan = members[(i + 1) % members.len()];
                events.push(
                    ReactionAdded {
                        envelope: next(fan, &mut seq),
                        message_id: message_id.clone(),
                        member_id: fan.clone(),
                        emoji: "👍".into(),
                    }
                    .into(),
                );
                if i % 15 == 0 {
                    events.push(
                        ReactionRemoved {
                            envelope: next(fan, &mut seq),
                            message_id: message_id.clone(),
                            member_id: fan.clone(),
                            emoji: "👍".into(),
                        }
                        .into(),
                    );
                }
            }
            if i % 13 == 0 {
                events.push(
                    MessageDeleted {
                        envelope: next(author, &mut seq),
                        message_id: message_id.clone(),
                    }
                    .into(),
                );
            }
            if i % 25 == 10 && members.len() > 1 {
                // A call: started, answered, talked 2 events long, everyone left.
                let (caller, callee) = (author, members[(i + 1) % members.len()]);
                let call_id = id();
                let started = next(caller, &mut seq);
                let media = if i % 2 == 0 {
                    CallMedia::Audio
                } else {
                    CallMedia::Video
                };
                events.push(
                    CallStarted {
                        envelope: started,
                        call_id: call_id.clone(),
                        initiator_id: caller.clone(),
                        media,
                        topology: if members.len() > 2 {
                            CallTopology::Sfu
                        } else {
                            CallTopology::P2p
                        },
                    }
                    .into(),
                );
                let answered = next(callee, &mut seq);
                let answered_at = answered.occurred_at;
                events.push(
                    CallJoined {
                        envelope: answered,
                        call_id: call_id.clone(),
                        member_id: callee.clone(),
                    }
                    .into(),
                );
                for who in [caller, callee] {
                    events.push(
                        CallLeft {
                            envelope: next(who, &mut seq),
                            call_id: call_id.clone(),
                            member_id: who.clone(),
                            reason: Some("hung_up".into()),
                        }
                        .into(),
                    );
                }
                let mut ended = next(callee, &mut seq);
                ended.actor_id = Some(callee.clone());
                let duration_ms = ended.occurred_at - answered_at;
                events.push(
                    CallEnded {
                        envelope: ended,
                        call_id,
                        duration_ms,
                        reason: Some("everyone_left".into()),
                    }
                    .into(),
                );
            }
            if i % 20 == 0 {
                let reader = members[(i + 2) % members.len()];
                let read_seq = seq;
                events.push(
                    ReadMarkerSet {
                        envelope: next(reader, &mut seq),
                        member_id: reader.clone(),
                        read_seq,
                    }
                    .into(),
                );
            }
        }
        if members.len() > 2 {
            let leaver = members[members.len() - 1];
            events.push(
                MemberLeft {
                    envelope: next(leaver, &mut seq),
                    member_id: leaver.clone(),
                    reason: None,
                }
                .into(),
            );
            let banned = members[members.len() - 2];
            events.push(
                MemberBanned {
                    envelope: next(&owner, &mut seq),
                    member_id: banned.clone(),
                    reason: Some("spam".into()),
                }
                .into(),
            );
        }
    }
    for (i, user) in users.iter().enumerate() {
        let status = if i % 3 == 0 {
            PresenceStatus::Offline
        } else {
            PresenceStatus::Online
        };
        let mut envelope = Envelope::for_user(user.clone(), Some(user.clone()));
        envelope.occurred_at = start_ms + 500;
        events.push(
            PresenceChanged {
                envelope: envelope.clone(),
                status: PresenceStatus::Online,
                node_id: "n1".into(),
            }
            .into(),
        );
        let mut later = Envelope::for_user(user.clone(), Some(user.clone()));
        later.occurred_at = start_ms + 600;
        events.push(
            PresenceChanged {
                envelope: later,
                status,
                node_id: "n1".into(),
            }
            .into(),
        );
    }
    Scenario {
        events,
        rooms: room_ids,
        users,
    }
}
