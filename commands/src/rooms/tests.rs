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
