//! Call lifecycle through the platform's entry: `call.*` frames on the socket and the call
//! commands over HTTP, the call's events on every member's stream in `seq` order, its entry in
//! the history, its talk time in `call_minutes`; and who may start, join and end a call
//! (anonymous, stranger, member, banned, moderator, owner), its budget, and a participant
//! banned mid-call leaving it.

mod common;

use std::time::Duration;

use common::{Client, entry_ws_url as ws_url};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::{Api, User, env, wait_for};

const T: Duration = Duration::from_secs(60);

async fn subscribed(user: &User, room: &str) -> anyhow::Result<Client> {
    let mut client = Client::connect(&ws_url(), Some(&user.access_token)).await?;
    client
        .send(json!({"type": "subscribe", "room_id": room, "since_seq": 0}))
        .await?;
    client.until("subscribed", T).await?;
    Ok(client)
}

/// The next frame that answers `reference` (`call.accepted` or `error`).
async fn answer(client: &mut Client, reference: &str) -> anyhow::Result<Value> {
    loop {
        let frame = client.json(T).await?;
        if frame["ref"] == reference {
            return Ok(frame);
        }
    }
}

/// The room's call events the socket sees next, until one of `last_kind`, as `(seq, event)`.
async fn call_events(client: &mut Client, last_kind: &str) -> anyhow::Result<Vec<(i64, Value)>> {
    let mut seen = Vec::new();
    loop {
        let frame = client.until("event", T).await?;
        let event = frame["event"].clone();
        let kind = event["kind"].as_str().unwrap_or_default().to_string();
        if kind.starts_with("call_") {
            seen.push((frame["seq"].as_i64().unwrap_or_default(), event));
        }
        if kind == last_kind {
            return Ok(seen);
        }
    }
}

fn kinds(events: &[(i64, Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(_, e)| e["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `SELECT` over ClickHouse's HTTP interface, rows of tab-separated values.
async fn clickhouse(sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let text = reqwest::Client::new()
        .post(env::clickhouse_url())
        .body(format!("{sql} FORMAT TabSeparated"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect())
}

#[tokio::test]
async fn a_call_is_on_every_members_stream_in_the_history_and_in_call_minutes() -> anyhow::Result<()>
{
    let api = Api::new(env::entry_url());
    let ann = api.user("call").await?;
    let bob = api.user("call").await?;
    let room = api.create_room(&ann, "public").await?;
    assert_eq!(api.join(&bob, &room).await?.status, StatusCode::OK);
    let mut ann_socket = subscribed(&ann, &room).await?;
    let mut bob_socket = subscribed(&bob, &room).await?;
    // Sockets that only watch (the two above also read their answers, skipping events).
    let mut ann_watch = subscribed(&ann, &room).await?;
    let mut bob_watch = subscribed(&bob, &room).await?;

    ann_socket
        .send(json!({"type": "call.start", "room_id": room, "media": "video", "ref": "start"}))
        .await?;
    let started = answer(&mut ann_socket, "start").await?;
    assert_eq!(started["type"], "call.accepted", "{started}");
    assert_eq!(started["action"], "start");
    let call = started["call_id"].as_str().unwrap_or_default().to_string();
    let rung = call_events(&mut bob_watch, "call_started").await?;
    assert_eq!(rung[0].1["call_id"], call.as_str());
    assert_eq!(rung[0].1["initiator_id"], ann.user_id.as_str());
    assert_eq!(rung[0].1["topology"], "p2p", "two members call directly");

    bob_socket
        .send(json!({"type": "call.join", "room_id": room, "call_id": call, "ref": "join"}))
        .await?;
    let joined = answer(&mut bob_socket, "join").await?;
    assert_eq!(joined["type"], "call.accepted", "{joined}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (socket, who) in [(&mut ann_socket, "ann"), (&mut bob_socket, "bob")] {
        socket
            .send(json!({"type": "call.leave", "room_id": room, "call_id": call, "ref": who}))
            .await?;
        let left = answer(socket, who).await?;
        assert_eq!(left["type"], "call.accepted", "{left}");
    }

    let seen = call_events(&mut ann_watch, "call_ended").await?;
    assert_eq!(
        kinds(&seen),
        [
            "call_started",
            "call_joined",
            "call_left",
            "call_left",
            "call_ended"
        ]
    );
    let seqs: Vec<i64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (seqs[0]..seqs[0] + 5).collect::<Vec<_>>(),
        "consecutive"
    );
    let end = &seen[4].1;
    assert_eq!(end["reason"], "everyone_left");
    let duration = end["duration_ms"].as_i64().unwrap_or_default();
    assert!(
        (1500..10_000).contains(&duration),
        "talked from the join to the last leave: {duration} ms"
    );
    let bob_seen = call_events(&mut bob_watch, "call_ended").await?;
    assert_eq!(bob_seen.last().map(|(s, _)| *s), Some(seqs[4]));

    // History: the call stands where it started, as it ended.
    let entry = wait_for("the call in the history", T, || async {
        let page = api
            .call(
                Method::GET,
                &format!("/v1/rooms/{room}/messages?limit=50"),
                Some(&ann.access_token),
                None,
            )
            .await
            .ok()?;
        let messages = page.body["messages"].as_array()?.clone();
        messages
            .into_iter()
            .find(|m| m["message_id"] == call.as_str() && m["call"]["status"] == "ended")
    })
    .await?;
    assert_eq!(entry["message_type"], "call");
    assert_eq!(entry["seq"], seqs[0]);
    assert_eq!(entry["user_id"], ann.user_id.as_str());
    let mut both = vec![ann.user_id.clone(), bob.user_id.clone()];
    both.sort();
    assert_eq!(entry["call"]["took_part"], json!(both));
    assert_eq!(entry["call"]["participants"], json!([]));
    assert_eq!(entry["call"]["duration_ms"], duration);
    assert_eq!(entry["call"]["reason"], "everyone_left");
    assert_eq!(entry["call"]["media"], "video");
    assert_eq!(entry["call"]["topology"], "p2p");

    // Analytics: one call with that talk time.
    let sql = format!(
        "SELECT sum(calls), sum(duration_ms) FROM chat.call_minutes WHERE room_id = '{room}'"
    );
    wait_for("the call in call_minutes", T, || async {
        let rows = clickhouse(&sql).await.ok()?;
        (rows.first()? == &vec!["1".to_string(), duration.to_string()]).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn who_may_start_join_and_end_a_call_and_a_participant_banned_mid_call_is_cut_off()
-> anyhow::Result<()> {
    let api = Api::new(env::entry_url());
    let owner = api.user("callz").await?;
    let moderator = api.user("callz").await?;
    let member = api.user("callz").await?;
    let other = api.user("callz").await?;
    let banned = api.user("callz").await?;
    let stranger = api.user("callz").await?;
    let room = api.create_room(&owner, "private").await?;
    api.invite_and_join(&owner, &room, &[&moderator, &member, &other, &banned])
        .await?;
    let role = api.set_role(&owner, &room, &moderator, "moderator").await?;
    assert_eq!(role.status, StatusCode::OK, "{}", role.body);
    assert_eq!(
        api.ban(&owner, &room, &banned).await?.status,
        StatusCode::CREATED
    );

    let calls = format!("/v1/rooms/{room}/calls");
    let start = |token: Option<String>| {
        let (api, calls) = (&api, &calls);
        async move {
            api.call(
                Method::POST,
                calls,
                token.as_deref(),
                Some(json!({"media": "audio"})),
            )
            .await
        }
    };
    let action = |user: &User, call: &str, what: &str| {
        let (api, room, token) = (&api, &room, user.access_token.clone());
        let path = format!("/v1/rooms/{room}/calls/{call}/{what}");
        async move { api.call(Method::POST, &path, Some(&token), None).await }
    };

    assert_eq!(start(None).await?.status, StatusCode::UNAUTHORIZED);
    for outsider in [&stranger, &banned] {
        let refused = start(Some(outsider.access_token.clone())).await?;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.body);
        assert_eq!(refused.code(), "room_not_found");
    }
    let started = start(Some(member.access_token.clone())).await?;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    let call = started.body["call_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let again = start(Some(owner.access_token.clone())).await?;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "call_in_progress")
    );

    for outsider in [&stranger, &banned] {
        let refused = action(outsider, &call, "join").await?;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.body);
    }
    // Over the socket, the same refusal comes back as an error frame naming the request.
    let mut outsider_socket = Client::connect(&ws_url(), Some(&stranger.access_token)).await?;
    outsider_socket
        .send(json!({"type": "call.join", "room_id": room, "call_id": call, "ref": "j"}))
        .await?;
    let refused = answer(&mut outsider_socket, "j").await?;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("room_not_found"))
    );
    outsider_socket
        .send(json!({"type": "call.join", "room_id": room, "ref": "k"}))
        .await?;
    let malformed = answer(&mut outsider_socket, "k").await?;
    assert_eq!(malformed["code"], "invalid_frame", "{malformed}");
    let unknown = action(&owner, "0193a7a0-0000-7000-8000-0000000000aa", "join").await?;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::NOT_FOUND, "call_not_found")
    );

    let mut watching = subscribed(&owner, &room).await?;
    for user in [&other, &owner] {
        let joined = action(user, &call, "join").await?;
        assert_eq!(joined.status, StatusCode::OK, "{}", joined.body);
    }
    // A member who is not the caller cannot end it for everyone; a moderator (not in it) can.
    let refused = action(&other, &call, "end").await?;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::FORBIDDEN, "not_allowed")
    );
    let ended = action(&moderator, &call, "end").await?;
    assert_eq!(ended.status, StatusCode::OK, "{}", ended.body);
    let seen = call_events(&mut watching, "call_ended").await?;
    assert_eq!(
        seen.last().map(|(_, e)| e["reason"].clone()),
        Some(json!("hung_up"))
    );
    let gone = action(&other, &call, "join").await?;
    assert_eq!(
        (gone.status, gone.code()),
        (StatusCode::NOT_FOUND, "call_not_found")
    );

    // The owner's call: `other` joins and is banned mid-call; the ban takes them out of it.
    let started = start(Some(owner.access_token.clone())).await?;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    let call = started.body["call_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(action(&other, &call, "join").await?.status, StatusCode::OK);
    assert_eq!(
        api.ban(&owner, &room, &other).await?.status,
        StatusCode::CREATED
    );
    let seen = call_events(&mut watching, "call_left").await?;
    let left = &seen.last().expect("a call event").1;
    assert_eq!(left["member_id"], other.user_id.as_str());
    assert_eq!(left["reason"], "banned");
    let back = action(&other, &call, "join").await?;
    assert_eq!(back.status, StatusCode::NOT_FOUND, "{}", back.body);
    // The owner ends their own call.
    assert_eq!(action(&owner, &call, "end").await?.status, StatusCode::OK);

    // Budget: call commands are counted per user; a script hammering them is told to wait.
    let started = start(Some(member.access_token.clone())).await?;
    let call = started.body["call_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut limited = None;
    for _ in 0..40 {
        let answer = action(&member, &call, "join").await?;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("the call budget runs out");
    assert_eq!(limited.code(), "rate_limited");
    assert!(limited.retry_after.is_some());
    Ok(())
}

// ---- signaling: the relay of offers, answers and ICE candidates ----

/// The next `call.signal` frame (skipping events and other frames).
async fn next_signal(client: &mut Client) -> anyhow::Result<Value> {
    client.until("call.signal", T).await
}

/// Returns once the node has taken `socket` in. A node does that after the handshake, and a
/// signal relayed before finds no socket of the user there (signals are ephemeral), which a busy
/// machine made happen; the answer to a subscribe comes after.
async fn in_place(socket: &mut Client, room: &str) -> anyhow::Result<()> {
    socket
        .send(json!({"type": "subscribe", "room_id": room}))
        .await?;
    socket.until("subscribed", T).await?;
    Ok(())
}

fn signal(call: &str, to: &User, payload: Value, reference: &str) -> Value {
    json!({"type": "call.signal", "call_id": call, "to": to.user_id, "payload": payload, "ref": reference})
}

fn offer(n: usize) -> Value {
    json!({"type": "offer", "sdp": format!("v=0\r\no=- {n} 2 IN IP4 127.0.0.1\r\n")})
}

fn candidate(n: usize) -> Value {
    json!({"candidate": format!("candidate:{n} 1 udp 2122260223 10.0.0.1 {} typ host", 50000 + n), "sdpMid": "0", "sdpMLineIndex": 0})
}

/// Starts a call of `caller` in `room` and lets `others` join it (HTTP, through the entry).
async fn call_with(
    api: &Api,
    room: &str,
    caller: &User,
    others: &[&User],
) -> anyhow::Result<String> {
    let call = api.start_call(caller, room).await?;
    for user in others {
        api.join_call(user, room, &call).await?;
    }
    Ok(call)
}

/// Sends `frame` and returns the error frame that answers its `reference`.
async fn refused(socket: &mut Client, frame: Value, reference: &str) -> anyhow::Result<Value> {
    socket.send(frame).await?;
    answer(socket, reference).await
}

#[tokio::test]
async fn signals_reach_only_participants_in_order_across_nodes() -> anyhow::Result<()> {
    let api = Api::new(env::entry_url());
    let ann = api.user("sig").await?;
    let bob = api.user("sig").await?;
    let carol = api.user("sig").await?;
    let eve = api.user("sig").await?;
    let room = api.create_room(&ann, "public").await?;
    for user in [&bob, &carol] {
        assert_eq!(api.join(user, &room).await?.status, StatusCode::OK);
    }
    // Ann on the stack's node (through the entry), Bob on a node of his own: the relay
    // crosses nodes.
    let other_node = common::Node::start(&[]).await?;
    let mut ann_socket = Client::connect(&ws_url(), Some(&ann.access_token)).await?;
    let mut bob_socket = Client::connect(&other_node.ws_url, Some(&bob.access_token)).await?;
    let mut carol_socket = Client::connect(&ws_url(), Some(&carol.access_token)).await?;
    let mut eve_socket = Client::connect(&ws_url(), Some(&eve.access_token)).await?;
    let call = call_with(&api, &room, &ann, &[&bob]).await?;

    ann_socket.send(signal(&call, &bob, offer(1), "o")).await?;
    for n in 0..20 {
        ann_socket
            .send(signal(&call, &bob, candidate(n), &format!("c{n}")))
            .await?;
    }
    let first = next_signal(&mut bob_socket).await?;
    assert_eq!(first["from"], ann.user_id.as_str());
    assert_eq!(first["call_id"], call.as_str());
    assert_eq!(first["room_id"], room.as_str());
    assert_eq!(first["payload"], offer(1));
    for n in 0..20 {
        let next = next_signal(&mut bob_socket).await?;
        assert_eq!(
            next["payload"],
            candidate(n),
            "candidates in the order sent"
        );
    }
    bob_socket
        .send(signal(
            &call,
            &ann,
            json!({"type": "answer", "sdp": "v=0\r\n"}),
            "a",
        ))
        .await?;
    let answered = next_signal(&mut ann_socket).await?;
    assert_eq!(answered["from"], bob.user_id.as_str());
    assert_eq!(answered["payload"]["type"], "answer");

    let e = refused(&mut carol_socket, signal(&call, &ann, offer(2), "r1"), "r1").await?;
    assert_eq!(e["code"], "not_in_call", "a member not in the call: {e}");
    let e = refused(&mut eve_socket, signal(&call, &ann, offer(2), "r2"), "r2").await?;
    assert_eq!(e["code"], "not_in_call", "a stranger: {e}");
    let e = refused(&mut ann_socket, signal(&call, &carol, offer(2), "r3"), "r3").await?;
    assert_eq!(
        e["code"], "peer_not_in_call",
        "to someone not in the call: {e}"
    );
    let e = refused(&mut ann_socket, signal(&call, &ann, offer(2), "r4"), "r4").await?;
    assert_eq!(e["code"], "invalid_input", "to oneself: {e}");
    let huge = json!({"type": "offer", "sdp": "a".repeat(20_000)});
    let e = refused(&mut ann_socket, signal(&call, &bob, huge, "r5"), "r5").await?;
    assert_eq!(e["code"], "payload_too_large", "{e}");
    let e = refused(
        &mut ann_socket,
        signal(&call, &bob, json!({"x": 1}), "r6"),
        "r6",
    )
    .await?;
    assert_eq!(e["code"], "invalid_input", "neither SDP nor candidate: {e}");
    let bad =
        json!({"type": "call.signal", "call_id": call, "to": "bob", "payload": {}, "ref": "r7"});
    let e = refused(&mut ann_socket, bad, "r7").await?;
    assert_eq!(e["code"], "invalid_frame", "{e}");
    let unknown = signal("0193a7a0-0000-7000-8000-0000000000bb", &bob, offer(3), "r8");
    let e = refused(&mut ann_socket, unknown, "r8").await?;
    assert_eq!(e["code"], "call_not_found", "{e}");
    // Over HTTP the relay refuses anonymous callers like every endpoint.
    let anonymous = api
        .call(
            Method::POST,
            &format!("/v1/calls/{call}/signal"),
            None,
            Some(json!({"to": bob.user_id, "payload": offer(4)})),
        )
        .await?;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Banned mid-call: Bob is out of the call, so nothing more passes between them.
    let ban = api
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/bans"),
            Some(&ann.access_token),
            Some(json!({"user_id": bob.user_id})),
        )
        .await?;
    assert_eq!(ban.status, StatusCode::CREATED, "{}", ban.body);
    let e = refused(&mut ann_socket, signal(&call, &bob, offer(5), "r9"), "r9").await?;
    assert_eq!(e["code"], "peer_not_in_call", "to the banned: {e}");
    let e = refused(&mut bob_socket, signal(&call, &ann, offer(5), "r10"), "r10").await?;
    assert_eq!(e["code"], "not_in_call", "from the banned: {e}");
    Ok(())
}

/// The call survives its nodes: a signaling instance killed mid-call (`kill -9`) comes back
/// knowing the call, including a join written while it was down; a participant whose fan-out
/// node dies reconnects to another node and gets the next signal there.
#[tokio::test]
async fn a_call_goes_on_when_signaling_and_fan_out_nodes_restart() -> anyhow::Result<()> {
    let api = Api::new(env::entry_url());
    let ann = api.user("sigr").await?;
    let bob = api.user("sigr").await?;
    let carol = api.user("sigr").await?;
    let room = api.create_room(&ann, "public").await?;
    for user in [&bob, &carol] {
        assert_eq!(api.join(user, &room).await?.status, StatusCode::OK);
    }
    // A signaling instance and fan-out nodes of their own (own consumer group and Redis
    // prefix), so killing them disturbs no other test.
    let prefix = common::private_prefix("sigr").await?;
    let port = test_support::free_port();
    let signaling_url = format!("http://127.0.0.1:{port}");
    let vars: Vec<(String, String)> = [
        ("CHAT_SIGNALING_LISTEN", format!("127.0.0.1:{port}")),
        ("CHAT_KAFKA_BROKERS", env::kafka_brokers()),
        ("CHAT_REGISTRY_URL", env::registry_url()),
        ("CHAT_REDIS_URL", env::redis_url()),
        ("CHAT_REDIS_PREFIX", prefix.clone()),
        (
            "CHAT_JWKS_URL",
            format!("{}/v1/auth/jwks", env::commands_url()),
        ),
        ("CHAT_SIGNALING_GROUP", test_support::unique("signaling")),
        // Call events ahead of the log, from the stack's commands tier.
        (
            "CHAT_FAST_CHANNEL",
            platform::cache::room_events_pattern(
                &std::env::var("CHAT_REDIS_PREFIX").unwrap_or_default(),
            ),
        ),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(std::env::var("CHAT_TURN_SECRET_FILE").map(|f| ("CHAT_TURN_SECRET_FILE".to_string(), f)))
    .collect();
    let mut signaling = test_support::Service::spawn("signaling", vars)?;
    signaling
        .wait_ready(&format!("{signaling_url}/readyz"), Duration::from_secs(180))
        .await?;
    let node_vars = [
        ("CHAT_REDIS_PREFIX", prefix.as_str()),
        ("CHAT_SIGNALING_URL", signaling_url.as_str()),
    ];
    let ann_node = common::Node::start(&node_vars).await?;
    let mut bob_node = common::Node::start(&node_vars).await?;
    let mut ann_socket = Client::connect(&ann_node.ws_url, Some(&ann.access_token)).await?;
    let mut bob_socket = Client::connect(&bob_node.ws_url, Some(&bob.access_token)).await?;
    in_place(&mut bob_socket, &room).await?;
    let call = call_with(&api, &room, &ann, &[&bob]).await?;
    ann_socket.send(signal(&call, &bob, offer(1), "o1")).await?;
    assert_eq!(next_signal(&mut bob_socket).await?["payload"], offer(1));

    signaling.kill9()?;
    let joined = api
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/calls/{call}/join"),
            Some(&carol.access_token),
            None,
        )
        .await?;
    assert_eq!(joined.status, StatusCode::OK, "{}", joined.body);
    signaling.start()?;
    signaling
        .wait_ready(&format!("{signaling_url}/readyz"), Duration::from_secs(180))
        .await?;
    let mut carol_socket = Client::connect(&ann_node.ws_url, Some(&carol.access_token)).await?;
    in_place(&mut carol_socket, &room).await?;
    ann_socket
        .send(signal(&call, &carol, offer(2), "o2"))
        .await?;
    let to_carol = next_signal(&mut carol_socket).await?;
    assert_eq!(
        to_carol["payload"],
        offer(2),
        "the join made while signaling was down"
    );
    ann_socket.send(signal(&call, &bob, offer(3), "o3")).await?;
    assert_eq!(next_signal(&mut bob_socket).await?["payload"], offer(3));

    // Bob's node dies; Bob reconnects elsewhere and the call goes on.
    bob_node.service.kill9()?;
    let other = common::Node::start(&node_vars).await?;
    let mut bob_again = Client::connect(&other.ws_url, Some(&bob.access_token)).await?;
    // The relay may run before the new socket registered: resend until it arrives, as a
    // client renegotiating after a reconnect does.
    let mut got = None;
    for attempt in 0..20 {
        ann_socket
            .send(signal(
                &call,
                &bob,
                offer(10 + attempt),
                &format!("x{attempt}"),
            ))
            .await?;
        if let Ok(Ok(frame)) =
            tokio::time::timeout(Duration::from_secs(1), next_signal(&mut bob_again)).await
        {
            got = Some(frame);
            break;
        }
    }
    let got = got.expect("a signal reaches Bob on his new node");
    assert_eq!(got["from"], ann.user_id.as_str());
    drop(bob_node);
    Ok(())
}

/// A participant whose sockets all dropped leaves the call once the presence grace is over:
/// Bob's node dies (`kill -9`), another node of the same presence system sweeps his lapsed
/// connection, and he is out of the call (`call_left` `disconnected`); a caller alone in a call
/// whose socket closes ends it (`call_ended` `disconnected`).
#[tokio::test]
async fn a_participant_whose_sockets_all_drop_leaves_the_call() -> anyhow::Result<()> {
    let api = Api::new(env::entry_url());
    let ann = api.user("drop").await?;
    let bob = api.user("drop").await?;
    let room = api.create_room(&ann, "public").await?;
    assert_eq!(api.join(&bob, &room).await?.status, StatusCode::OK);
    let mut watching = subscribed(&ann, &room).await?;
    let prefix = common::private_prefix("drop").await?;
    let vars = [
        ("CHAT_REDIS_PREFIX", prefix.as_str()),
        ("CHAT_WS_PRESENCE_TTL_SECS", "3"),
    ];
    let mut doomed = common::Node::start(&vars).await?;
    let staying = common::Node::start(&vars).await?;
    let _bob_socket = Client::connect(&doomed.ws_url, Some(&bob.access_token)).await?;
    let call = call_with(&api, &room, &ann, &[&bob]).await?;
    call_events(&mut watching, "call_joined").await?;

    doomed.service.kill9()?;
    let left = call_events(&mut watching, "call_left").await?;
    let left = &left.last().expect("a call event").1;
    assert_eq!(left["member_id"], bob.user_id.as_str());
    assert_eq!(left["reason"], "disconnected");
    // Ann, still in it, hangs up: the call ends as everyone left.
    let hung_up = api
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/calls/{call}/leave"),
            Some(&ann.access_token),
            None,
        )
        .await?;
    assert_eq!(hung_up.status, StatusCode::OK);
    let ended = call_events(&mut watching, "call_ended").await?;
    assert_eq!(
        ended.last().map(|(_, e)| e["reason"].clone()),
        Some(json!("everyone_left"))
    );

    // Bob, back on the other node, calls and closes his only socket: the call ends.
    let bob_socket = Client::connect(&staying.ws_url, Some(&bob.access_token)).await?;
    call_with(&api, &room, &bob, &[]).await?;
    call_events(&mut watching, "call_started").await?;
    drop(bob_socket);
    let gone = call_events(&mut watching, "call_ended").await?;
    assert_eq!(
        gone.iter()
            .map(|(_, e)| e["reason"].clone())
            .collect::<Vec<_>>(),
        [json!("disconnected"), json!("disconnected")],
        "call_left then call_ended, both disconnected"
    );
    Ok(())
}
