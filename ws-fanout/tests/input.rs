//! Bad input on the socket: every malformed frame gets an error frame and the socket keeps
//! serving; an oversize frame closes it cleanly (1009); a bad token gets an error frame and a
//! policy-violation close (1008). A socket's sends beyond its in-flight bound are refused at
//! once with their ref. And a reader that stops reading gets a resync and a close while the
//! node's memory stays bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::bail;
use common::{Client, Incoming, Node};
use futures::SinkExt;
use serde_json::json;
use test_support::{Api, env};
use tokio_tungstenite::tungstenite::Message;

/// Generous: a loaded machine delays the log; the normal answer is immediate.
const T: Duration = Duration::from_secs(120);

async fn assert_alive(client: &mut Client) -> anyhow::Result<()> {
    client.send(json!({"type": "ping"})).await?;
    let pong = client.until("pong", T).await?;
    assert_eq!(pong["type"], "pong");
    Ok(())
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_socket_lives_on() -> anyhow::Result<()> {
    let node = Node::start(&[]).await?;
    let commands = Api::new(env::commands_url());
    let owner = commands.user("wsbad").await?;
    let stranger = commands.user("wsbad").await?;
    let private = commands.create_room(&owner, "private").await?;
    let public = commands.create_room(&owner, "public").await?;

    let mut client = Client::connect(&node.ws_url, Some(&stranger.access_token)).await?;
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("{not json"), "invalid_frame"),
        (Message::text("[1,2,3]"), "invalid_frame"),
        (Message::text("{\"type\":42}"), "invalid_frame"),
        (Message::text("{\"type\":\"teleport\"}"), "unknown_type"),
        (Message::text("{\"type\":\"subscribe\"}"), "invalid_frame"),
        (
            Message::text("{\"type\":\"subscribe\",\"room_id\":\"nope\"}"),
            "invalid_frame",
        ),
        (
            Message::text(format!(
                "{{\"type\":\"subscribe\",\"room_id\":\"{public}\",\"since_seq\":-5}}"
            )),
            "invalid_frame",
        ),
        (
            Message::text(format!(
                "{{\"type\":\"send\",\"room_id\":\"{public}\",\"content\":\"no id\"}}"
            )),
            "invalid_frame",
        ),
        (Message::binary(vec![0u8, 1, 2, 3]), "invalid_frame"),
        // A private room the caller is not in does not exist for them.
        (
            Message::text(format!(
                "{{\"type\":\"subscribe\",\"room_id\":\"{private}\",\"ref\":\"p\"}}"
            )),
            "not_found",
        ),
        // Resuming past the room's last event.
        (
            Message::text(format!(
                "{{\"type\":\"subscribe\",\"room_id\":\"{public}\",\"since_seq\":999999}}"
            )),
            "invalid_input",
        ),
        // Not a member: the write API's own refusal comes back with the client's ref.
        (
            Message::text(format!(
                "{{\"type\":\"send\",\"room_id\":\"{public}\",\"client_msg_id\":\"c-1\",\"content\":\"hi\"}}"
            )),
            "not_a_member",
        ),
    ];
    for (message, code) in cases {
        let shown = format!("{message:?}");
        client.send_raw(message).await?;
        let error = client.until("error", T).await?;
        assert_eq!(error["code"], code, "{shown}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_alive(&mut client).await?;
    }

    // The socket still works for real: join, subscribe, send, ack and the event itself.
    commands.join(&stranger, &public).await?;
    client
        .send(json!({"type": "subscribe", "room_id": public, "since_seq": 0, "ref": "s"}))
        .await?;
    let subscribed = client.until("subscribed", T).await?;
    assert_eq!(subscribed["ref"], "s");
    client
        .send(
            json!({"type": "send", "room_id": public, "client_msg_id": "c-2", "content": "hello"}),
        )
        .await?;
    // The fast channel may deliver the event before the write API's answer becomes the ack.
    let (mut ack, mut event) = (None, None);
    while ack.is_none() || event.is_none() {
        let frame = match client.json(T).await {
            Ok(f) => f,
            Err(e) => bail!(
                "ack {ack:?} / event {event:?} incomplete ({e}); node: {}",
                node.state().await
            ),
        };
        match frame["type"].as_str() {
            Some("ack") => ack = Some(frame),
            Some("event") if frame["event"]["content"] == "hello" => event = Some(frame),
            _ => {}
        }
    }
    let (ack, event) = (ack.unwrap_or_default(), event.unwrap_or_default());
    assert_eq!(ack["client_msg_id"], "c-2");
    assert_eq!(event["seq"], ack["seq"]);
    assert_eq!(event["event"]["kind"], "message_posted");
    assert_eq!(event["event"]["content"], "hello");

    // Oversize: a clean close with 1009.
    client
        .send_raw(Message::text("x".repeat(70 * 1024)))
        .await?;
    let closed = loop {
        match client.next(T).await {
            Ok(Incoming::Closed(c)) => break c,
            Ok(Incoming::Json(_)) => continue,
            Err(e) => panic!("expected a close after an oversize frame: {e}"),
        }
    };
    assert_eq!(closed.map(|(code, _)| code), Some(1009));
    Ok(())
}

#[tokio::test]
async fn sends_past_the_sockets_bound_are_refused_with_their_ref_and_the_rest_land()
-> anyhow::Result<()> {
    let node = Node::start(&[]).await?;
    let commands = Api::new(env::commands_url());
    let owner = commands.user("wsbound").await?;
    let room = commands.create_room(&owner, "public").await?;
    let mut client = Client::connect(&node.ws_url, Some(&owner.access_token)).await?;
    client
        .send(json!({"type": "subscribe", "room_id": room, "since_seq": 0}))
        .await?;
    client.until("subscribed", T).await?;

    // 20 sends in one write: the node reads them before the first HTTP command can come back,
    // so only 8 may be in flight; 20 stays under the write API's burst of 30, so every
    // refusal is the node's own bound.
    let ids: Vec<String> = (0..20).map(|i| format!("b-{i}")).collect();
    for id in &ids {
        let frame = json!({"type": "send", "room_id": room, "client_msg_id": id, "content": id});
        client.ws.feed(Message::text(frame.to_string())).await?;
    }
    client.ws.flush().await?;

    let mut answers: BTreeMap<String, String> = BTreeMap::new();
    let mut delivered = Vec::new();
    let acked =
        |answers: &BTreeMap<String, String>| answers.values().filter(|code| *code == "ack").count();
    while answers.len() < ids.len() || delivered.len() < acked(&answers) {
        let frame = client.json(T).await?;
        let (id, answer) = match frame["type"].as_str() {
            Some("ack") => (&frame["client_msg_id"], "ack".to_string()),
            Some("error") => (&frame["ref"], frame["code"].as_str().unwrap_or("").into()),
            Some("event") if frame["event"]["kind"] == "message_posted" => {
                delivered.push(frame["event"]["content"].as_str().unwrap_or("").to_string());
                continue;
            }
            _ => continue,
        };
        let id = id.as_str().unwrap_or("").to_string();
        assert!(ids.contains(&id), "an answer for no send: {frame}");
        assert!(
            answers.insert(id, answer).is_none(),
            "answered twice: {frame}"
        );
    }
    let answered = |wanted: &str| -> BTreeSet<String> {
        answers
            .iter()
            .filter(|(_, code)| *code == wanted)
            .map(|(id, _)| id.clone())
            .collect()
    };
    let (acked_ids, refused) = (answered("ack"), answered("too_many_in_flight"));
    assert!(
        answers
            .values()
            .all(|code| code == "ack" || code == "too_many_in_flight"),
        "{answers:?}"
    );
    assert!(acked(&answers) >= 8, "{answers:?}");
    assert!(
        !refused.is_empty(),
        "none of 20 sends at once was refused: {answers:?}"
    );
    // What was acknowledged is exactly what the room got, once each.
    assert_eq!(
        delivered.iter().cloned().collect::<BTreeSet<_>>(),
        acked_ids
    );
    assert_eq!(delivered.len(), acked_ids.len(), "{delivered:?}");
    assert_alive(&mut client).await?;
    Ok(())
}

#[tokio::test]
async fn bad_tokens_are_refused_with_an_error_frame_and_a_policy_close() -> anyhow::Result<()> {
    let node = Node::start(&[("CHAT_WS_AUTH_SECS", "2")]).await?;
    let commands = Api::new(env::commands_url());
    let user = commands.user("wsauth").await?;

    for token in ["garbage", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."] {
        let mut client = Client::connect(&node.ws_url, Some(token)).await?;
        let error = client.json(T).await?;
        assert_eq!(error["type"], "error");
        assert_eq!(error["code"], "invalid_token");
        match client.next(T).await? {
            Incoming::Closed(Some((code, _))) => assert_eq!(code, 1008),
            other => panic!("expected a 1008 close, got {other:?}"),
        }
    }
    // No token and no auth frame in time.
    let mut silent = Client::connect(&node.ws_url, None).await?;
    let error = silent.json(T).await?;
    assert_eq!(error["type"], "error");
    assert!(matches!(
        silent.next(T).await?,
        Incoming::Closed(Some((1008, _)))
    ));

    // The token as the first frame works.
    let mut client = Client::connect(&node.ws_url, None).await?;
    client
        .send(json!({"type": "auth", "access_token": user.access_token}))
        .await?;
    assert_alive(&mut client).await?;
    Ok(())
}

#[tokio::test]
async fn a_reader_that_stops_reading_gets_resync_and_is_closed() -> anyhow::Result<()> {
    let node = Node::start(&[("CHAT_WS_QUEUE", "64")]).await?;
    let commands = Api::new(env::commands_url());
    let owner = commands.user("wsslow").await?;
    let room = commands.create_room(&owner, "public").await?;
    let reader = commands.user("wsslow").await?;
    commands.join(&reader, &room).await?;
    let mut authors = Vec::new();
    for _ in 0..20 {
        let a = commands.user("wsslow").await?;
        commands.join(&a, &room).await?;
        authors.push(a);
    }

    // A socket with a tiny receive buffer that reads nothing after subscribing.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let addr = node
        .ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()?;
    let stream = socket.connect(addr).await?;
    let url = format!("{}?access_token={}", node.ws_url, reader.access_token);
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    let mut slow = Client { ws };
    slow.send(json!({"type": "subscribe", "room_id": room}))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = node.rss_kb()?;

    // 20 authors x 60 messages of 3,000 characters: far more than 64 frames and the buffers.
    let content = "y".repeat(3000);
    let mut posting = Vec::new();
    for (a, author) in authors.into_iter().enumerate() {
        let commands = Api::new(env::commands_url());
        let room = room.clone();
        let content = content.clone();
        posting.push(tokio::spawn(async move {
            for i in 0..60 {
                commands
                    .post_until_accepted(
                        &author,
                        &room,
                        &format!("slow-{a}-{i}"),
                        &content,
                        Duration::from_secs(120),
                    )
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    // The node gives a dropped socket a grace period for its notice, so the reader wakes up as
    // soon as the node marks it, while the authors may still be posting.
    test_support::wait_for(
        "the node to drop the slow socket",
        Duration::from_secs(300),
        || async { (node.metric("ws_fallen_behind_total").await >= 1.0).then_some(()) },
    )
    .await?;
    let rss_after = node.rss_kb()?;
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );

    // Now read: events, then a resync for the room, then the close.
    let mut resync = None;
    let closed = loop {
        match slow.next(Duration::from_secs(30)).await? {
            Incoming::Json(v) if v["type"] == "resync" => resync = Some(v),
            Incoming::Json(_) => {}
            Incoming::Closed(c) => break c,
        }
    };
    let resync = resync.expect("a resync frame before the close");
    assert_eq!(resync["room_id"], room.as_str());
    assert_eq!(closed.map(|(code, _)| code), Some(1013));
    for p in posting {
        p.await??;
    }
    Ok(())
}
