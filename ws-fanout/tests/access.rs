//! Who may read and type in a room on a node that never saw the room's events (it started
//! after them): the log cannot say, so the presence read model decides (members, bans,
//! visibility), the node's one fallback. Each kind of caller is tried: a stranger, a visitor of
//! a public room, a member, a banned user, the owner.

mod common;

use std::time::Duration;

use common::{Client, Node};
use serde_json::{Value, json};
use test_support::{Api, env};

const T: Duration = Duration::from_secs(30);

async fn subscribe(client: &mut Client, room: &str) -> anyhow::Result<Value> {
    client
        .send(json!({"type": "subscribe", "room_id": room, "ref": room}))
        .await?;
    loop {
        let frame = client.json(T).await?;
        if frame["type"] == "subscribed" || frame["type"] == "error" {
            return Ok(frame);
        }
    }
}

#[tokio::test]
async fn a_node_that_did_not_see_a_rooms_events_asks_the_read_model() -> anyhow::Result<()> {
    let commands = Api::new(env::commands_url());
    let owner = commands.user("acown").await?;
    let member = commands.user("acmem").await?;
    let banned = commands.user("acban").await?;
    let stranger = commands.user("acstr").await?;
    let public = commands.create_room(&owner, "public").await?;
    let private = commands.create_room(&owner, "private").await?;
    let call = |user: &test_support::User, path: String, body: Value| {
        let commands = commands.clone();
        let token = user.access_token.clone();
        async move {
            let answer = commands
                .call(reqwest::Method::POST, &path, Some(&token), Some(body))
                .await?;
            anyhow::ensure!(answer.status.is_success(), "{path}: {answer:?}");
            anyhow::Ok(())
        }
    };
    call(
        &owner,
        format!("/v1/rooms/{private}/invites"),
        json!({"user_id": member.user_id}),
    )
    .await?;
    commands.join(&member, &private).await?;
    commands.join(&banned, &public).await?;
    call(
        &owner,
        format!("/v1/rooms/{public}/bans"),
        json!({"user_id": banned.user_id}),
    )
    .await?;

    // The presence projector has all of it; a node started now begins its tail after it.
    let redis = platform::cache::connect(&env::redis_url()).await?;
    let base = std::env::var("CHAT_REDIS_PREFIX").unwrap_or_default();
    test_support::wait_for(
        "the read model to hold the ban and the member",
        T,
        || async {
            let prefix = read_model::live::redis_live(&redis, &base).await.ok()?;
            let in_private =
                read_model::presence::standing(&redis, &prefix, &private, &member.user_id)
                    .await
                    .ok()?;
            let in_public =
                read_model::presence::standing(&redis, &prefix, &public, &banned.user_id)
                    .await
                    .ok()?;
            (in_private.member && in_public.banned && in_public.public == Some(true)).then_some(())
        },
    )
    .await?;
    let node = Node::start(&[("CHAT_WS_WARM_RECORDS", "0")]).await?;

    // A stranger: a private room does not exist for them; a public one they may read as a
    // visitor, but not type in.
    let mut s = Client::connect(&node.ws_url, Some(&stranger.access_token)).await?;
    let refused = subscribe(&mut s, &private).await?;
    assert_eq!(refused["code"], "not_found", "{refused}");
    let visiting = subscribe(&mut s, &public).await?;
    assert_eq!(visiting["type"], "subscribed", "{visiting}");
    s.send(json!({"type": "typing", "room_id": public})).await?;
    let typing = s.until("error", T).await?;
    assert_eq!(typing["code"], "forbidden", "{typing}");

    // Banned: refused with the reason.
    let mut b = Client::connect(&node.ws_url, Some(&banned.access_token)).await?;
    let refused = subscribe(&mut b, &public).await?;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    // The owner and a member of the private room read it; the member's typing reaches the owner.
    let mut o = Client::connect(&node.ws_url, Some(&owner.access_token)).await?;
    let mut m = Client::connect(&node.ws_url, Some(&member.access_token)).await?;
    for (client, who) in [(&mut o, "owner"), (&mut m, "member")] {
        let answer = subscribe(client, &private).await?;
        assert_eq!(answer["type"], "subscribed", "{who}: {answer}");
    }
    m.send(json!({"type": "typing", "room_id": private}))
        .await?;
    let seen = o.until("typing", T).await?;
    assert_eq!(seen["user_id"], member.user_id.as_str());
    Ok(())
}

/// Reads `client`'s frames until the room's subscription ends; returns the seq of the last
/// event it was shown before the `access_revoked` frame.
async fn until_revoked(client: &mut Client, room: &str) -> anyhow::Result<i64> {
    let mut last = 0;
    loop {
        let frame = client.json(T).await?;
        match frame["type"].as_str() {
            Some("event") if frame["room_id"] == room => last = frame["seq"].as_i64().unwrap_or(0),
            Some("error") => {
                assert_eq!(frame["code"], "access_revoked", "{frame}");
                assert_eq!(frame["ref"], room);
                return Ok(last);
            }
            _ => {}
        }
    }
}

/// Through the entry: a visitor reading a public room stops receiving it when it turns private,
/// right after the update itself; a member who is banned, right after the ban; the members who
/// stay keep receiving, and neither outsider gets back in.
#[tokio::test]
async fn access_ends_when_a_room_turns_private_or_a_reader_is_banned() -> anyhow::Result<()> {
    let entry = env::entry_url();
    let ws = format!("{}/v1/ws", entry.replacen("http", "ws", 1));
    let api = Api::new(&entry);
    let owner = api.user("endown").await?;
    let member = api.user("endmem").await?;
    let visitor = api.user("endvis").await?;
    let banned = api.user("endban").await?;
    let room = api.create_room(&owner, "public").await?;
    for user in [&member, &banned] {
        let joined = api.join(user, &room).await?;
        assert!(joined.status.is_success(), "{joined:?}");
    }
    let mut sockets = Vec::new();
    for user in [&member, &visitor, &banned] {
        let mut socket = Client::connect(&ws, Some(&user.access_token)).await?;
        let answer = subscribe(&mut socket, &room).await?;
        assert_eq!(answer["type"], "subscribed", "{}: {answer}", user.username);
        sockets.push(socket);
    }
    let [mut m, mut v, mut b] =
        <[Client; 3]>::try_from(sockets).map_err(|_| anyhow::anyhow!("3"))?;
    let write = |method: reqwest::Method, path: String, body: Value| {
        let (api, token) = (api.clone(), owner.access_token.clone());
        async move {
            let answer = api.call(method, &path, Some(&token), Some(body)).await?;
            anyhow::ensure!(answer.status.is_success(), "{path}: {answer:?}");
            anyhow::Ok(answer.body["seq"].as_i64().unwrap_or_default())
        }
    };

    let private = write(
        reqwest::Method::PATCH,
        format!("/v1/rooms/{room}"),
        json!({"visibility": "private"}),
    )
    .await?;
    assert_eq!(until_revoked(&mut v, &room).await?, private);
    let ban = write(
        reqwest::Method::POST,
        format!("/v1/rooms/{room}/bans"),
        json!({"user_id": banned.user_id}),
    )
    .await?;
    assert_eq!(until_revoked(&mut b, &room).await?, ban);

    let after = api
        .post_until_accepted(&owner, &room, "after-ending", "members only", T)
        .await?;
    let after = after["seq"].as_i64().unwrap_or_default();
    loop {
        let event = m.until("event", T).await?;
        if event["seq"] == after {
            break;
        }
    }
    for (client, who) in [(&mut v, "visitor"), (&mut b, "banned")] {
        match client.json(Duration::from_secs(1)).await {
            Err(_) => {}
            Ok(frame) => assert_ne!(frame["type"], "event", "{who} still receives: {frame}"),
        }
    }
    let refused = subscribe(&mut v, &room).await?;
    assert_eq!(refused["code"], "not_found", "{refused}");
    let refused = subscribe(&mut b, &room).await?;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    Ok(())
}

/// Through the entry: a logout ends the session's open sockets at once (the revocation reaches
/// every node through the log), not at their next token check a minute later; another session
/// of the same user keeps its socket.
#[tokio::test]
async fn a_logout_closes_the_sessions_open_sockets_at_once() -> anyhow::Result<()> {
    let entry = env::entry_url();
    let ws = format!("{}/v1/ws", entry.replacen("http", "ws", 1));
    let api = Api::new(&entry);
    let user = api.user("bye").await?;
    let other = api.login(&user.username, &user.password).await?.body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut sockets = Vec::new();
    for token in [&user.access_token, &user.access_token, &other] {
        let mut socket = Client::connect(&ws, Some(token)).await?;
        socket.send(json!({"type": "ping"})).await?;
        socket.until("pong", T).await?;
        sockets.push(socket);
    }
    let started = std::time::Instant::now();
    let out = api
        .call(
            reqwest::Method::POST,
            "/v1/auth/logout",
            Some(&user.access_token),
            None,
        )
        .await?;
    assert_eq!(out.status, reqwest::StatusCode::NO_CONTENT);
    for socket in &mut sockets[..2] {
        let frame = socket.json(Duration::from_secs(5)).await?;
        assert_eq!(frame["code"], "session_revoked", "{frame}");
        match socket.next(Duration::from_secs(5)).await? {
            common::Incoming::Closed(Some((code, _))) => assert_eq!(code, 4001),
            other => panic!("expected close 4001, got {other:?}"),
        }
    }
    let took = started.elapsed();
    println!("logout to both sockets closed: {} ms", took.as_millis());
    assert!(
        took < Duration::from_secs(2),
        "the sockets closed {took:?} after the logout"
    );
    sockets[2].send(json!({"type": "ping"})).await?;
    sockets[2].until("pong", T).await?;
    Ok(())
}

/// Through the entry: who may download a file. Whoever may read a room where a message still
/// shows it (members; visitors of a public room) gets the bytes; a banned user, an outsider of
/// a private room and an anonymous caller do not; once the message is deleted nobody does, its
/// uploader included.
#[tokio::test]
async fn files_follow_the_messages_that_show_them() -> anyhow::Result<()> {
    let entry = env::entry_url();
    let api = Api::new(&entry);
    let http = reqwest::Client::new();
    let owner = api.user("filown").await?;
    let member = api.user("filmem").await?;
    let visitor = api.user("filvis").await?;
    let banned = api.user("filban").await?;
    let public = api.create_room(&owner, "public").await?;
    let private = api.create_room(&owner, "private").await?;
    for (user, room) in [(&member, &public), (&banned, &public)] {
        assert!(api.join(user, room).await?.status.is_success());
    }
    let owner_call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let (api, token) = (api.clone(), owner.access_token.clone());
        async move {
            let answer = api.call(method, &path, Some(&token), body).await?;
            anyhow::ensure!(answer.status.is_success(), "{path}: {answer:?}");
            anyhow::Ok(answer.body)
        }
    };
    owner_call(
        reqwest::Method::POST,
        format!("/v1/rooms/{private}/invites"),
        Some(json!({"user_id": member.user_id})),
    )
    .await?;
    assert!(api.join(&member, &private).await?.status.is_success());
    owner_call(
        reqwest::Method::POST,
        format!("/v1/rooms/{public}/bans"),
        Some(json!({"user_id": banned.user_id})),
    )
    .await?;
    let mut shared = Vec::new();
    for (room, bytes) in [
        (&public, b"public bytes".to_vec()),
        (&private, b"private bytes".to_vec()),
    ] {
        let uploaded: Value = common::upload(&http, &owner.access_token, "note.txt", bytes.clone())
            .await?
            .json()
            .await?;
        let file = uploaded["file_id"].as_str().unwrap_or_default().to_string();
        let posted = owner_call(
            reqwest::Method::POST,
            format!("/v1/rooms/{room}/messages"),
            Some(json!({"client_msg_id": format!("file-{file}"), "content": "a file", "attachments": [file]})),
        )
        .await?;
        shared.push((
            file,
            posted["message_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            bytes,
        ));
    }
    let download = |token: Option<String>, file: String| {
        let (http, entry) = (http.clone(), entry.clone());
        async move {
            let mut request = http.get(format!("{entry}/v1/files/{file}"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.bytes().await?.to_vec()))
        }
    };
    let token = |user: &test_support::User| Some(user.access_token.clone());
    let (public_file, public_message, public_bytes) = shared[0].clone();
    let (private_file, _, private_bytes) = shared[1].clone();
    // Once projected, the members read both.
    test_support::wait_for("the files to be projected", T, || async {
        let a = download(token(&member), public_file.clone()).await.ok()?;
        let b = download(token(&member), private_file.clone()).await.ok()?;
        (a.0 == 200 && b.0 == 200).then_some(())
    })
    .await?;
    assert_eq!(
        download(token(&member), public_file.clone()).await?,
        (200, public_bytes.clone())
    );
    assert_eq!(
        download(token(&member), private_file.clone()).await?,
        (200, private_bytes)
    );
    assert_eq!(
        download(token(&visitor), public_file.clone()).await?,
        (200, public_bytes)
    );
    assert_eq!(
        download(token(&visitor), private_file.clone()).await?.0,
        404
    );
    assert_eq!(download(token(&banned), public_file.clone()).await?.0, 404);
    assert_eq!(download(None, public_file.clone()).await?.0, 401);

    owner_call(
        reqwest::Method::DELETE,
        format!("/v1/rooms/{public}/messages/{public_message}"),
        None,
    )
    .await?;
    test_support::wait_for("the deleted message's file to be gone", T, || async {
        (download(token(&member), public_file.clone()).await.ok()?.0 == 404).then_some(())
    })
    .await?;
    assert_eq!(download(token(&owner), public_file.clone()).await?.0, 404);
    assert_eq!(download(token(&member), private_file).await?.0, 200);
    Ok(())
}
