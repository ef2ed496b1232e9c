//! The command rules, exercised on state built by applying the events they emit.

use schemas::events::{Role, Visibility};

use super::*;
use crate::error::CommandError;

const ROOM: &str = "018f0000-0000-7000-8000-000000000001";

fn actor(name: &str) -> Actor {
    Actor {
        user_id: name.to_string(),
        username: name.to_string(),
    }
}

struct World {
    rooms: Rooms,
}

impl World {
    fn with_room(owner: &str, visibility: Visibility) -> Self {
        let mut w = World {
            rooms: Rooms::default(),
        };
        w.ok(
            owner,
            Command::CreateRoom {
                name: "room".into(),
                visibility,
                topic: None,
            },
        );
        w
    }

    fn run(&mut self, who: &str, command: Command) -> Result<Outcome, CommandError> {
        match decide(ROOM, self.rooms.get(ROOM), &actor(who), command)? {
            Decision::Emit(events, outcome) => {
                for e in &events {
                    assert_eq!(
                        self.rooms.apply(e),
                        Applied::Applied,
                        "emitted events apply in order"
                    );
                }
                Ok(outcome)
            }
            Decision::Noop(outcome) => Ok(outcome),
        }
    }

    fn ok(&mut self, who: &str, command: Command) -> Outcome {
        self.run(who, command)
            .unwrap_or_else(|e| panic!("{who}: {e}"))
    }

    fn err(&mut self, who: &str, command: Command) -> CommandError {
        match self.run(who, command) {
            Ok(o) => panic!("{who}: expected an error, got {o:?}"),
            Err(e) => e,
        }
    }

    fn seq(&self) -> i64 {
        self.rooms.get(ROOM).map(|r| r.seq).unwrap_or(0)
    }

    fn post(&mut self, who: &str, key: &str) -> Result<Outcome, CommandError> {
        self.run(
            who,
            Command::Post {
                client_msg_id: key.into(),
                content: "hi".into(),
                reply_to: None,
                attachments: vec![],
            },
        )
    }
}

fn code(e: &CommandError) -> String {
    match e {
        CommandError::NotFound(what) => format!("404 {what}"),
        CommandError::Forbidden(code, _) => format!("403 {code}"),
        CommandError::Conflict(code, _) => format!("409 {code}"),
        CommandError::Invalid(_) => "400".into(),
        other => format!("other {other}"),
    }
}

#[test]
fn seqs_are_consecutive_and_posts_are_idempotent_per_author() {
    let mut w = World::with_room("alice", Visibility::Public);
    assert_eq!(w.seq(), 1);
    w.ok("bob", Command::Join);
    let first = w.post("bob", "k1").unwrap();
    assert_eq!(first.seq, Some(3));
    let again = w.post("bob", "k1").unwrap();
    assert_eq!(again, first, "same client_msg_id: same answer");
    assert_eq!(w.seq(), 3, "and nothing written");
    // Another author may use the same key.
    assert_eq!(w.post("alice", "k1").unwrap().seq, Some(4));
}

#[test]
fn private_rooms_are_invisible_to_outsiders() {
    let mut w = World::with_room("alice", Visibility::Private);
    assert_eq!(code(&w.err("eve", Command::Join)), "404 room");
    assert_eq!(code(&w.post("eve", "k").unwrap_err()), "404 room");
    assert_eq!(code(&w.err("eve", Command::Leave)), "404 room");
    w.ok(
        "alice",
        Command::Invite {
            user_id: "bob".into(),
        },
    );
    w.ok("bob", Command::Join);
    assert!(w.post("bob", "k").is_ok());
    // Invites are for owners and moderators of private rooms.
    assert_eq!(
        code(&w.err(
            "bob",
            Command::Invite {
                user_id: "carol".into()
            }
        )),
        "403 not_allowed"
    );
}

#[test]
fn public_rooms_explain_why() {
    let mut w = World::with_room("alice", Visibility::Public);
    assert_eq!(code(&w.post("eve", "k").unwrap_err()), "403 not_a_member");
    assert_eq!(
        code(&w.err(
            "alice",
            Command::Invite {
                user_id: "bob".into()
            }
        )),
        "400"
    );
    w.ok("eve", Command::Join);
    w.ok(
        "alice",
        Command::Ban {
            user_id: "eve".into(),
            reason: Some("spam".into()),
        },
    );
    assert_eq!(code(&w.post("eve", "k2").unwrap_err()), "403 banned");
    assert_eq!(code(&w.err("eve", Command::Join)), "403 banned");
    // Banning twice changes nothing.
    let seq = w.seq();
    w.ok(
        "alice",
        Command::Ban {
            user_id: "eve".into(),
            reason: None,
        },
    );
    assert_eq!(w.seq(), seq);
}

#[test]
fn roles_rank_bans_and_role_changes() {
    let mut w = World::with_room("owner", Visibility::Public);
    for who in ["mod", "m1", "m2"] {
        w.ok(who, Command::Join);
    }
    assert_eq!(
        code(&w.err(
            "mod",
            Command::SetRole {
                user_id: "m1".into(),
                role: Role::Moderator
            }
        )),
        "403 not_allowed"
    );
    w.ok(
        "owner",
        Command::SetRole {
            user_id: "mod".into(),
            role: Role::Moderator,
        },
    );
    assert_eq!(
        code(&w.err(
            "mod",
            Command::Ban {
                user_id: "owner".into(),
                reason: None
            }
        )),
        "403 not_allowed"
    );
    w.ok(
        "mod",
        Command::Ban {
            user_id: "m1".into(),
            reason: None,
        },
    );
    assert_eq!(
        code(&w.err(
            "m2",
            Command::Ban {
                user_id: "mod".into(),
                reason: None
            }
        )),
        "403 not_allowed"
    );
    assert_eq!(
        code(&w.err(
            "owner",
            Command::SetRole {
                user_id: "owner".into(),
                role: Role::Member
            }
        )),
        "409 last_owner"
    );
    assert_eq!(code(&w.err("owner", Command::Leave)), "409 last_owner");
    w.ok(
        "owner",
        Command::SetRole {
            user_id: "mod".into(),
            role: Role::Owner,
        },
    );
    w.ok("owner", Command::Leave);
    assert_eq!(
        code(&w.err(
            "owner",
            Command::SetRole {
                user_id: "nobody".into(),
                role: Role::Member
            }
        )),
        "403 not_a_member"
    );
}

#[test]
fn only_authors_edit_and_moderators_may_delete() {
    let mut w = World::with_room("owner", Visibility::Public);
    for who in ["author", "other", "mod"] {
        w.ok(who, Command::Join);
    }
    w.ok(
        "owner",
        Command::SetRole {
            user_id: "mod".into(),
            role: Role::Moderator,
        },
    );
    let m1 = w.post("author", "a").unwrap().message_id.unwrap();
    let m2 = w.post("author", "b").unwrap().message_id.unwrap();
    let edit = |m: &str| Command::Edit {
        message_id: m.into(),
        content: "changed".into(),
    };
    assert_eq!(code(&w.err("other", edit(&m1))), "403 not_author");
    assert_eq!(code(&w.err("mod", edit(&m1))), "403 not_author");
    w.ok("author", edit(&m1));
    assert_eq!(
        code(&w.err(
            "other",
            Command::Delete {
                message_id: m1.clone()
            }
        )),
        "403 not_allowed"
    );
    w.ok(
        "mod",
        Command::Delete {
            message_id: m1.clone(),
        },
    );
    w.ok(
        "author",
        Command::Delete {
            message_id: m2.clone(),
        },
    );
    // Deleted messages cannot be edited, reacted to or replied to; deleting again is a no-op.
    assert_eq!(code(&w.err("author", edit(&m1))), "404 message");
    assert_eq!(
        code(&w.err(
            "other",
            Command::React {
                message_id: m1.clone(),
                emoji: "👍".into()
            }
        )),
        "404 message"
    );
    let reply = Command::Post {
        client_msg_id: "r".into(),
        content: "re".into(),
        reply_to: Some(m2.clone()),
        attachments: vec![],
    };
    assert_eq!(code(&w.err("other", reply)), "400");
    let seq = w.seq();
    w.ok("author", Command::Delete { message_id: m2 });
    assert_eq!(w.seq(), seq);
    assert_eq!(
        code(&w.err(
            "author",
            Command::Delete {
                message_id: "unknown".into()
            }
        )),
        "404 message"
    );
}

#[test]
fn reactions_and_read_markers_are_idempotent() {
    let mut w = World::with_room("alice", Visibility::Public);
    let m = w.post("alice", "k").unwrap().message_id.unwrap();
    let react = || Command::React {
        message_id: m.clone(),
        emoji: "👍".into(),
    };
    let first = w.ok("alice", react());
    assert!(first.seq.is_some());
    let seq = w.seq();
    assert_eq!(
        w.ok("alice", react()).seq,
        None,
        "second identical reaction writes nothing"
    );
    assert_eq!(w.seq(), seq);
    w.ok(
        "alice",
        Command::Unreact {
            message_id: m.clone(),
            emoji: "👍".into(),
        },
    );
    assert_eq!(
        w.ok(
            "alice",
            Command::Unreact {
                message_id: m.clone(),
                emoji: "👍".into()
            }
        )
        .seq,
        None
    );

    let top = w.seq();
    w.ok("alice", Command::MarkRead { seq: top });
    assert_eq!(
        w.ok("alice", Command::MarkRead { seq: top - 1 }).seq,
        None,
        "markers never go back"
    );
    assert_eq!(
        code(&w.err("alice", Command::MarkRead { seq: top + 5 })),
        "400"
    );
}

#[test]
fn commands_on_unknown_rooms_are_404_and_rooms_are_created_once() {
    let mut w = World {
        rooms: Rooms::default(),
    };
    assert_eq!(code(&w.err("alice", Command::Join)), "404 room");
    w.ok(
        "alice",
        Command::CreateRoom {
            name: "r".into(),
            visibility: Visibility::Public,
            topic: None,
        },
    );
    assert_eq!(
        code(&w.err(
            "bob",
            Command::CreateRoom {
                name: "r".into(),
                visibility: Visibility::Public,
                topic: None
            }
        )),
        "409 room_exists"
    );
}

#[test]
fn room_updates_need_rank() {
    let mut w = World::with_room("owner", Visibility::Public);
    w.ok("member", Command::Join);
    let rename = |name: &str| Command::UpdateRoom {
        name: Some(name.into()),
        topic: None,
        visibility: None,
    };
    assert_eq!(code(&w.err("member", rename("x"))), "403 not_allowed");
    w.ok(
        "owner",
        Command::SetRole {
            user_id: "member".into(),
            role: Role::Moderator,
        },
    );
    w.ok("member", rename("renamed"));
    let hide = Command::UpdateRoom {
        name: None,
        topic: None,
        visibility: Some(Visibility::Private),
    };
    assert_eq!(code(&w.err("member", hide.clone())), "403 not_allowed");
    w.ok("owner", hide);
    assert!(w.rooms.get(ROOM).unwrap().is_private());
    assert_eq!(w.rooms.get(ROOM).unwrap().name, "renamed");
}

#[test]
fn a_message_shows_a_bounded_number_of_different_reactions() {
    use crate::rooms::decide::MAX_REACTION_KINDS;
    let mut w = World::with_room("alice", Visibility::Public);
    w.ok("bob", Command::Join);
    let m = w.post("alice", "k").unwrap().message_id.unwrap();
    let react = |emoji: String| Command::React {
        message_id: m.clone(),
        emoji,
    };
    let shortcode = |i: usize| format!(":e{i}:");
    for i in 0..MAX_REACTION_KINDS {
        w.ok("alice", react(shortcode(i)));
    }
    assert_eq!(
        code(&w.err("alice", react(shortcode(MAX_REACTION_KINDS)))),
        "409 too_many_reactions"
    );
    assert_eq!(
        code(&w.err("bob", react(shortcode(MAX_REACTION_KINDS)))),
        "409 too_many_reactions",
        "the bound is the message's, not one user's"
    );
    // Joining one of the shown reactions is always possible; removing one frees a place.
    w.ok("bob", react(shortcode(0)));
    w.ok(
        "alice",
        Command::Unreact {
            message_id: m.clone(),
            emoji: shortcode(1),
        },
    );
    w.ok("bob", react(shortcode(MAX_REACTION_KINDS)));
    assert_eq!(
        code(&w.err("alice", react(shortcode(MAX_REACTION_KINDS + 1)))),
        "409 too_many_reactions"
    );
}

// ---- calls ----

/// The API code an error is answered with (the one mapping of `crate::error`).
trait Code {
    fn code(self) -> &'static str;
}

impl Code for CommandError {
    fn code(self) -> &'static str {
        platform::error::ApiError::from(self).code
    }
}

impl World {
    /// The events `command` emits (applied), or its error.
    fn emitted(
        &mut self,
        who: &str,
        command: Command,
    ) -> Result<Vec<schemas::DomainEvent>, CommandError> {
        match decide(ROOM, self.rooms.get(ROOM), &actor(who), command)? {
            Decision::Emit(events, _) => {
                for e in &events {
                    assert_eq!(self.rooms.apply(e), Applied::Applied);
                }
                Ok(events)
            }
            Decision::Noop(_) => Ok(Vec::new()),
        }
    }

    fn start_call(&mut self, who: &str) -> String {
        let outcome = self.ok(
            who,
            Command::StartCall {
                media: schemas::events::CallMedia::Video,
            },
        );
        outcome.call_id.expect("a call id")
    }

    fn members(&mut self, names: &[&str]) {
        for name in names {
            self.ok(name, Command::Join);
        }
    }
}

/// `(kind, member or reason)` of call events, to compare sequences.
fn call_story(events: &[schemas::DomainEvent]) -> Vec<(String, String)> {
    use schemas::DomainEvent as E;
    events
        .iter()
        .filter_map(|e| match e {
            E::CallStarted(c) => Some(("started".into(), c.initiator_id.clone())),
            E::CallJoined(c) => Some(("joined".into(), c.member_id.clone())),
            E::CallLeft(c) => Some((
                "left".into(),
                format!("{}:{}", c.member_id, c.reason.clone().unwrap_or_default()),
            )),
            E::CallEnded(c) => Some(("ended".into(), c.reason.clone().unwrap_or_default())),
            _ => None,
        })
        .collect()
}

fn story(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn only_members_start_and_join_one_call_per_room() {
    let mut w = World::with_room("owner", Visibility::Public);
    w.members(&["ann"]);
    let media = || Command::StartCall {
        media: schemas::events::CallMedia::Audio,
    };
    assert_eq!(w.err("stranger", media()).code(), "not_a_member");
    let call = w.start_call("ann");
    assert_eq!(w.err("owner", media()).code(), "call_in_progress");
    let join = |id: &str| Command::JoinCall {
        call_id: id.to_string(),
    };
    assert_eq!(w.err("stranger", join(&call)).code(), "not_a_member");
    assert_eq!(
        w.err("owner", join("018f0000-0000-7000-8000-0000000000ff"))
            .code(),
        "call_not_found"
    );
    let events = w.emitted("owner", join(&call)).unwrap();
    assert_eq!(call_story(&events), story(&[("joined", "owner")]));
    assert!(
        w.emitted("owner", join(&call)).unwrap().is_empty(),
        "a repeat writes nothing"
    );
    let room = w.rooms.get(ROOM).unwrap();
    assert!(room.call(&call).unwrap().answered_at.is_some());
}

#[test]
fn the_last_one_leaving_ends_the_call() {
    let mut w = World::with_room("owner", Visibility::Public);
    w.members(&["ann", "bob"]);
    let call = w.start_call("ann");
    let id = || call.clone();
    w.ok("bob", Command::JoinCall { call_id: id() });
    let leave = |reason| Command::LeaveCall {
        call_id: call.clone(),
        reason,
    };
    let first = w.emitted("ann", leave(LeaveReason::HungUp)).unwrap();
    assert_eq!(call_story(&first), story(&[("left", "ann:hung_up")]));
    assert!(
        w.emitted("ann", leave(LeaveReason::HungUp))
            .unwrap()
            .is_empty()
    );
    let last = w.emitted("bob", leave(LeaveReason::HungUp)).unwrap();
    assert_eq!(
        call_story(&last),
        story(&[("left", "bob:hung_up"), ("ended", "everyone_left")])
    );
    assert!(w.rooms.get(ROOM).unwrap().call.is_none());
    assert_eq!(
        w.err("bob", Command::JoinCall { call_id: id() }).code(),
        "call_not_found"
    );
    // A new call may start now; the last one dropping ends it as "disconnected".
    let again = w.start_call("bob");
    let dropped = w
        .emitted(
            "bob",
            Command::LeaveCall {
                call_id: again,
                reason: LeaveReason::Disconnected,
            },
        )
        .unwrap();
    assert_eq!(
        call_story(&dropped),
        story(&[("left", "bob:disconnected"), ("ended", "disconnected")])
    );
}

#[test]
fn declines_and_the_ring_timeout_end_an_unanswered_call() {
    let mut w = World::with_room("owner", Visibility::Public);
    w.members(&["ann", "bob"]);
    let call = w.start_call("ann");
    let decline = |busy| Command::DeclineCall {
        call_id: call.clone(),
        busy,
    };
    assert_eq!(w.err("ann", decline(false)).code(), "in_call");
    let bob = w.emitted("bob", decline(true)).unwrap();
    assert_eq!(call_story(&bob), story(&[("left", "bob:busy")]));
    assert!(w.emitted("bob", decline(false)).unwrap().is_empty());
    assert_eq!(
        w.rooms.rung_out(30_000, i64::MAX / 2).len(),
        1,
        "still ringing"
    );
    let owner = w.emitted("owner", decline(false)).unwrap();
    assert_eq!(
        call_story(&owner),
        story(&[("left", "owner:declined"), ("ended", "declined")])
    );
    assert!(w.rooms.rung_out(30_000, i64::MAX / 2).is_empty());

    // Nobody answers: the ring timeout (the writer's own command) ends it, once.
    let call = w.start_call("ann");
    let started = w.rooms.get(ROOM).unwrap().call(&call).unwrap().started_at;
    assert!(w.rooms.rung_out(30_000, started + 29_999).is_empty());
    assert_eq!(w.rooms.next_ring_out(30_000), Some(started + 30_000));
    assert_eq!(
        w.rooms.rung_out(30_000, started + 30_000),
        vec![(ROOM.to_string(), call.clone())]
    );
    let timeout = || Command::RingTimeout {
        call_id: call.clone(),
    };
    let ended = w.emitted("", timeout()).unwrap();
    assert_eq!(call_story(&ended), story(&[("ended", "unanswered")]));
    match &ended[0] {
        schemas::DomainEvent::CallEnded(e) => {
            assert_eq!(e.duration_ms, 0, "never answered: no talk time");
            assert_eq!(e.envelope.actor_id, None, "nobody ended it");
        }
        other => panic!("{other:?}"),
    }
    assert!(w.emitted("", timeout()).unwrap().is_empty());
    assert_eq!(w.rooms.next_ring_out(30_000), None);

    // Answered calls never ring out.
    let call = w.start_call("ann");
    w.ok(
        "bob",
        Command::JoinCall {
            call_id: call.clone(),
        },
    );
    assert_eq!(w.rooms.next_ring_out(30_000), None);
    assert!(
        w.emitted("", Command::RingTimeout { call_id: call })
            .unwrap()
            .is_empty()
    );
}

#[test]
fn banned_and_departing_members_leave_the_call_and_only_callers_and_moderators_end_it() {
    let mut w = World::with_room("owner", Visibility::Public);
    w.members(&["ann", "bob", "mod"]);
    w.ok(
        "owner",
        Command::SetRole {
            user_id: "mod".into(),
            role: Role::Moderator,
        },
    );
    let call = w.start_call("ann");
    w.ok(
        "bob",
        Command::JoinCall {
            call_id: call.clone(),
        },
    );
    let banned = w
        .emitted(
            "mod",
            Command::Ban {
                user_id: "bob".into(),
                reason: None,
            },
        )
        .unwrap();
    assert_eq!(call_story(&banned), story(&[("left", "bob:banned")]));
    assert_eq!(
        w.err(
            "bob",
            Command::JoinCall {
                call_id: call.clone()
            }
        )
        .code(),
        "banned"
    );
    let gone = w.emitted("ann", Command::Leave).unwrap();
    assert_eq!(
        call_story(&gone),
        story(&[("left", "ann:left_room"), ("ended", "everyone_left")])
    );

    w.members(&["ann", "cat"]);
    let call = w.start_call("ann");
    let end = || Command::EndCall {
        call_id: call.clone(),
    };
    assert_eq!(w.err("cat", end()).code(), "not_allowed");
    assert_eq!(w.err("stranger", end()).code(), "not_a_member");
    assert_eq!(
        call_story(&w.emitted("mod", end()).unwrap()),
        story(&[("ended", "hung_up")])
    );
    let call = w.start_call("cat");
    assert_eq!(
        call_story(
            &w.emitted("cat", Command::EndCall { call_id: call })
                .unwrap()
        ),
        story(&[("ended", "hung_up")])
    );
}

#[test]
fn talk_time_counts_from_the_answer() {
    let mut w = World::with_room("owner", Visibility::Private);
    let call = w.start_call("owner");
    // Make the answer look 5 s older than now, as if the call had been going on that long.
    let joined = w.emitted(
        "owner",
        Command::Invite {
            user_id: "ann".into(),
        },
    );
    assert!(joined.is_ok());
    w.ok("ann", Command::Join);
    w.ok(
        "ann",
        Command::JoinCall {
            call_id: call.clone(),
        },
    );
    if let Some((_, info)) = &mut w.rooms.get_mut_for_test(ROOM).call {
        info.answered_at = info.answered_at.map(|a| a - 5_000);
    }
    let ended = w
        .emitted("owner", Command::EndCall { call_id: call })
        .unwrap();
    match ended.last() {
        Some(schemas::DomainEvent::CallEnded(e)) => {
            assert!((5_000..6_000).contains(&e.duration_ms), "{}", e.duration_ms)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rooms_of_three_or_more_call_through_the_sfu() {
    use schemas::events::CallTopology;
    let topology_of_next_call = |w: &mut World, who: &str| {
        let events = w
            .emitted(
                who,
                Command::StartCall {
                    media: schemas::events::CallMedia::Video,
                },
            )
            .unwrap();
        let Some(schemas::DomainEvent::CallStarted(started)) = events.first() else {
            panic!("no CallStarted: {events:?}");
        };
        (started.call_id.clone(), started.topology)
    };
    let mut w = World::with_room("owner", Visibility::Public);
    w.members(&["ann"]);
    let (call, two) = topology_of_next_call(&mut w, "ann");
    assert_eq!(
        two,
        CallTopology::P2p,
        "two members call each other directly"
    );
    w.ok(
        "ann",
        Command::LeaveCall {
            call_id: call,
            reason: LeaveReason::HungUp,
        },
    );
    w.members(&["bob"]);
    let (_, three) = topology_of_next_call(&mut w, "ann");
    assert_eq!(
        three,
        CallTopology::Sfu,
        "a third member makes it a group call"
    );
}
