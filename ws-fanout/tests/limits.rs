//! Budgets through the public entry: every write and every expensive read of one user is
//! bounded (429 with `Retry-After` in the API's error shape), and a user's sockets,
//! subscriptions and frames are bounded on a fan-out node.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Incoming, Node};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::{Answer, Api, User, env};

const T: Duration = Duration::from_secs(60);

/// Sends rounds of `calls` requests, 16 at a time, and checks that the budget (`per_sec` sustained,
/// `burst` at once) let through no more than it allows over the time taken and refused the
/// rest with 429, `Retry-After` and the error shape.
async fn spend(
    what: &str,
    calls: usize,
    (per_sec, burst): (f64, usize),
    call: impl Fn(usize) -> futures::future::BoxFuture<'static, anyhow::Result<Answer>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut answers: Vec<Answer> = Vec::new();
    let mut sent = 0;
    // Round after round until the budget refuses: on a loaded machine one round may be answered
    // no faster than the budget refills.
    while !answers
        .iter()
        .any(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        && started.elapsed() < Duration::from_secs(30)
    {
        let round: Vec<Answer> = futures::stream::iter((sent..sent + calls).map(&call))
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        answers.extend(round);
        sent += calls;
    }
    let calls = answers.len();
    let elapsed = started.elapsed().as_secs_f64();
    let mut passed = 0;
    let mut refused = 0;
    for answer in &answers {
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(answer.code(), "rate_limited", "{what}: {}", answer.body);
            assert!(
                answer.retry_after.is_some_and(|s| s >= 1),
                "{what}: Retry-After"
            );
            refused += 1;
        } else {
            assert!(
                !answer.status.is_server_error(),
                "{what}: {} {}",
                answer.status,
                answer.body
            );
            passed += 1;
        }
    }
    let allowed = burst + (per_sec * elapsed).ceil() as usize + 1;
    assert!(
        refused > 0,
        "{what}: {calls} calls in {elapsed:.2} s, none refused"
    );
    assert!(
        passed <= allowed,
        "{what}: {passed} passed in {elapsed:.2} s, the budget allows {allowed}"
    );
    Ok(())
}

fn boxed(
    api: &Api,
    method: Method,
    path: String,
    token: &str,
    body: Option<Value>,
) -> futures::future::BoxFuture<'static, anyhow::Result<Answer>> {
    let (api, token) = (api.clone(), token.to_string());
    Box::pin(async move { api.call(method, &path, Some(&token), body).await })
}

#[tokio::test]
async fn every_write_and_expensive_read_of_a_user_has_a_budget() -> anyhow::Result<()> {
    let api = Api::new(env::entry_url());
    let owner: User = api.user("budget").await?;
    let room = api.create_room(&owner, "public").await?;
    let posted = api
        .post_until_accepted(&owner, &room, "budget-1", "spend me", T)
        .await?;
    let message = posted["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let token = owner.access_token.clone();

    spend("edits", 40, (2.0, 20), |i| {
        let body = json!({"content": format!("edit {i}")});
        boxed(
            &api,
            Method::PATCH,
            format!("/v1/rooms/{room}/messages/{message}"),
            &token,
            Some(body),
        )
    })
    .await?;
    spend("reactions", 60, (5.0, 30), |_| {
        let path = format!("/v1/rooms/{room}/messages/{message}/reactions/:budget:");
        boxed(&api, Method::PUT, path, &token, None)
    })
    .await?;
    spend("read markers", 60, (5.0, 30), |_| {
        boxed(
            &api,
            Method::POST,
            format!("/v1/rooms/{room}/read"),
            &token,
            Some(json!({"seq": 1})),
        )
    })
    .await?;
    spend("membership", 60, (2.0, 30), |_| {
        boxed(
            &api,
            Method::POST,
            format!("/v1/rooms/{room}/join"),
            &token,
            None,
        )
    })
    .await?;
    spend("rooms", 15, (0.1, 10), |_| {
        let body = json!({"name": "budget room", "visibility": "private"});
        boxed(&api, Method::POST, "/v1/rooms".into(), &token, Some(body))
    })
    .await?;
    spend("search", 40, (2.0, 20), |i| {
        boxed(
            &api,
            Method::GET,
            format!("/v1/search?q=spend{i}"),
            &token,
            None,
        )
    })
    .await?;
    spend("history", 100, (20.0, 60), |_| {
        boxed(
            &api,
            Method::GET,
            format!("/v1/rooms/{room}/messages?limit=5"),
            &token,
            None,
        )
    })
    .await?;
    spend("reads", 160, (20.0, 100), |_| {
        boxed(
            &api,
            Method::GET,
            format!("/v1/rooms/{room}/presence"),
            &token,
            None,
        )
    })
    .await?;

    // Uploads (and then downloads of what was uploaded).
    let http = reqwest::Client::new();
    let first = common::upload(&http, &token, "a.txt", b"budget".to_vec()).await?;
    assert_eq!(first.status(), StatusCode::CREATED);
    let file: Value = first.json().await?;
    let file_id = file["file_id"].as_str().unwrap_or_default().to_string();
    spend("downloads", 80, (5.0, 50), |_| {
        boxed(
            &api,
            Method::GET,
            format!("/v1/files/{file_id}"),
            &token,
            None,
        )
    })
    .await?;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let answer = common::upload(&http, &token, &format!("{i}.txt"), b"x".to_vec()).await?;
        statuses.push(answer.status().as_u16());
    }
    let created = statuses.iter().filter(|s| **s == 201).count();
    assert!(
        (9..=11).contains(&created) && statuses.iter().all(|s| *s == 201 || *s == 429),
        "one upload before, then a burst of 10: {statuses:?}"
    );

    // Another user's budgets are their own.
    let other = api.user("budget").await?;
    let answer = api
        .call(
            Method::GET,
            "/v1/search?q=spend",
            Some(&other.access_token),
            None,
        )
        .await?;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    Ok(())
}

/// A node bounds one user's sockets and each socket's subscriptions (small bounds here; the
/// defaults are 20 and 200), and the frames of all of a user's sockets.
#[tokio::test]
async fn a_user_holds_bounded_sockets_subscriptions_and_frames() -> anyhow::Result<()> {
    let node = Node::start(&[
        ("CHAT_WS_MAX_SOCKETS_PER_USER", "3"),
        ("CHAT_WS_MAX_SUBSCRIPTIONS", "2"),
    ])
    .await?;
    let api = Api::new(env::commands_url());
    let user = api.user("wsbound").await?;
    let rooms = [
        api.create_room(&user, "public").await?,
        api.create_room(&user, "public").await?,
        api.create_room(&user, "public").await?,
    ];
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut socket = Client::connect(&node.ws_url, Some(&user.access_token)).await?;
        socket.send(json!({"type": "ping"})).await?;
        socket.until("pong", T).await?;
        sockets.push(socket);
    }
    let mut fourth = Client::connect(&node.ws_url, Some(&user.access_token)).await?;
    let refused = fourth.json(T).await?;
    assert_eq!(refused["code"], "too_many_sockets", "{refused}");
    match fourth.next(T).await? {
        Incoming::Closed(Some((code, _))) => assert_eq!(code, 1008),
        other => panic!("expected a 1008 close, got {other:?}"),
    }
    // A closed socket gives its place back.
    let mut first = sockets.remove(0);
    first.ws.close(None).await?;
    drop(first);
    test_support::wait_for("a place to free up", T, || async {
        let mut again = Client::connect(&node.ws_url, Some(&user.access_token))
            .await
            .ok()?;
        again.send(json!({"type": "ping"})).await.ok()?;
        (again.json(Duration::from_secs(5)).await.ok()?["type"] == "pong").then_some(again)
    })
    .await?;

    // Subscriptions: two rooms, then a third is refused; re-subscribing a held room is not.
    let socket = &mut sockets[0];
    for room in &rooms[..2] {
        socket
            .send(json!({"type": "subscribe", "room_id": room}))
            .await?;
        socket.until("subscribed", T).await?;
    }
    socket
        .send(json!({"type": "subscribe", "room_id": rooms[2], "ref": "third"}))
        .await?;
    let refused = socket.until("error", T).await?;
    assert_eq!(refused["code"], "too_many_subscriptions", "{refused}");
    assert_eq!(refused["ref"], "third");
    socket
        .send(json!({"type": "subscribe", "room_id": rooms[0]}))
        .await?;
    socket.until("subscribed", T).await?;

    // Frames: a burst of 300 pings gets at most the budget's pongs (100 at once, 20/s), the
    // rest an error frame that says when to try again; the socket stays open.
    let started = Instant::now();
    for _ in 0..300 {
        socket.send(json!({"type": "ping"})).await?;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 300 {
        let frame = socket.json(T).await?;
        match frame["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited", "{frame}");
                assert!(
                    frame["retry_after"].as_u64().is_some_and(|s| s >= 1),
                    "{frame}"
                );
                limited += 1;
            }
            _ => {}
        }
    }
    let allowed = 100 + (20.0 * started.elapsed().as_secs_f64()).ceil() as usize + 1;
    assert!(
        limited > 0 && pongs <= allowed,
        "{pongs} pongs, {limited} refused"
    );
    socket
        .send(json!({"type": "unsubscribe", "room_id": rooms[1]}))
        .await?;
    Ok(())
}
