//! Room and message commands against the running commands tier; what they wrote is read back
//! from the real broker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use schemas::DomainEvent;
use schemas::topics::ROOM_EVENTS;
use serde_json::json;
use test_support::{Api, env, unique};

fn api() -> Api {
    Api::new(env::commands_url())
}

async fn room_events(room: &str) -> anyhow::Result<Vec<DomainEvent>> {
    test_support::log::read_key(
        &env::kafka_brokers(),
        &env::registry_url(),
        ROOM_EVENTS,
        room,
    )
    .await
}

/// The room's events are exactly seq 1..=n, in order, each once.
fn assert_gap_free(events: &[DomainEvent]) {
    let seqs: Vec<i64> = events.iter().map(|e| e.envelope().seq.unwrap()).collect();
    let expected: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(seqs, expected, "seq must be 1..=n without gap or duplicate");
}

#[tokio::test]
async fn a_thousand_concurrent_posts_get_seq_1_to_n() -> anyhow::Result<()> {
    let api = api();
    let owner = api.user("seqown").await?;
    let room = api.create_room(&owner, "public").await?;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let user = api.user("seq").await?;
        assert_eq!(api.join(&user, &room).await?.status, StatusCode::OK);
        clients.push(user);
    }
    let tasks = clients.into_iter().enumerate().map(|(c, user)| {
        let api = api.clone();
        let room = room.clone();
        tokio::spawn(async move {
            // Each client keeps 10 posts in flight; the rate limit answers 429 and they retry.
            let posts = futures::stream::iter(0..100).map(|i| {
                let (api, room, user) = (api.clone(), room.clone(), user.clone());
                async move {
                    let key = format!("c{c}-m{i}");
                    let body = api
                        .post_until_accepted(
                            &user,
                            &room,
                            &key,
                            &format!("client {c} message {i}"),
                            Duration::from_secs(120),
                        )
                        .await?;
                    anyhow::Ok((key, body["seq"].as_i64().unwrap()))
                }
            });
            use futures::StreamExt;
            posts.buffer_unordered(10).collect::<Vec<_>>().await
        })
    });
    // Spawn all ten before awaiting any (the map is lazy).
    let tasks: Vec<_> = tasks.collect();
    let mut acked = BTreeMap::new();
    for task in tasks {
        for result in task.await? {
            let (key, seq) = result?;
            assert!(acked.insert(key, seq).is_none());
        }
    }
    assert_eq!(acked.len(), 1000);
    let events = room_events(&room).await?;
    // RoomCreated + 10 joins + 1000 posts.
    assert_eq!(events.len(), 1011);
    assert_gap_free(&events);
    let posts: BTreeMap<String, i64> = events
        .iter()
        .filter_map(|e| match e {
            DomainEvent::MessagePosted(p) => Some((
                p.envelope.idempotency_key.clone().unwrap(),
                p.envelope.seq.unwrap(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        posts, acked,
        "every acknowledged post is on the log with the seq it was answered"
    );
    Ok(())
}

#[tokio::test]
async fn the_same_client_msg_id_writes_once_and_answers_the_same() -> anyhow::Result<()> {
    let api = api();
    let user = api.user("idem").await?;
    let room = api.create_room(&user, "public").await?;
    let first = api.post(&user, &room, "retry-me", "hello").await?;
    assert_eq!(first.status, StatusCode::CREATED);
    let answers = futures::future::join_all(
        (0..5).map(|_| api.post(&user, &room, "retry-me", "hello again")),
    )
    .await;
    for answer in answers {
        let answer = answer?;
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(answer.body, first.body);
    }
    let events = room_events(&room).await?;
    assert_eq!(events.len(), 2, "RoomCreated and one MessagePosted");
    assert_gap_free(&events);
    Ok(())
}

#[tokio::test]
async fn membership_bans_and_authorship_are_enforced() -> anyhow::Result<()> {
    let api = api();
    let owner = api.user("own").await?;
    let member = api.user("mem").await?;
    let moderator = api.user("mod").await?;
    let outsider = api.user("out").await?;

    // Private room: outsiders see nothing (404), even when posting or joining.
    let private = api.create_room(&owner, "private").await?;
    let post = api
        .post(&outsider, &private, &unique("c"), "let me in")
        .await?;
    assert_eq!(
        (post.status, post.code()),
        (StatusCode::NOT_FOUND, "room_not_found")
    );
    assert_eq!(
        api.join(&outsider, &private).await?.status,
        StatusCode::NOT_FOUND
    );
    let invite = |who: &str| json!({"user_id": who});
    let path = |p: &str| format!("/v1/rooms/{private}{p}");
    let by_member = api
        .call(
            Method::POST,
            &path("/invites"),
            Some(&member.access_token),
            Some(invite(&member.user_id)),
        )
        .await?;
    assert_eq!(
        by_member.status,
        StatusCode::NOT_FOUND,
        "non-members cannot even see the room"
    );
    for who in [&member, &moderator] {
        let answer = api
            .call(
                Method::POST,
                &path("/invites"),
                Some(&owner.access_token),
                Some(invite(&who.user_id)),
            )
            .await?;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        assert_eq!(api.join(who, &private).await?.status, StatusCode::OK);
    }
    let unknown_user = api
        .call(
            Method::POST,
            &path("/invites"),
            Some(&owner.access_token),
            Some(invite(&uuid::Uuid::now_v7().to_string())),
        )
        .await?;
    assert_eq!(
        (unknown_user.status, unknown_user.code()),
        (StatusCode::NOT_FOUND, "user_not_found")
    );
    let promote = api
        .call(
            Method::PUT,
            &path(&format!("/members/{}/role", moderator.user_id)),
            Some(&owner.access_token),
            Some(json!({"role": "moderator"})),
        )
        .await?;
    assert_eq!(promote.status, StatusCode::OK, "{}", promote.body);

    // Only the author edits; a moderator may delete.
    let message = api
        .post(&member, &private, &unique("c"), "original")
        .await?;
    let message_id = message.body["message_id"].as_str().unwrap().to_string();
    let msg_path = path(&format!("/messages/{message_id}"));
    let edit = |who: &test_support::User| {
        let (api, msg_path, token) = (api.clone(), msg_path.clone(), who.access_token.clone());
        async move {
            api.call(
                Method::PATCH,
                &msg_path,
                Some(&token),
                Some(json!({"content": "edited"})),
            )
            .await
        }
    };
    let by_other = edit(&moderator).await?;
    assert_eq!(
        (by_other.status, by_other.code()),
        (StatusCode::FORBIDDEN, "not_author")
    );
    assert_eq!(edit(&member).await?.status, StatusCode::OK);
    let react = api
        .call(
            Method::PUT,
            &format!("{msg_path}/reactions/%F0%9F%91%8D"),
            Some(&owner.access_token),
            None,
        )
        .await?;
    assert_eq!(react.status, StatusCode::OK, "{}", react.body);
    let bad_emoji = api
        .call(
            Method::PUT,
            &format!("{msg_path}/reactions/abc"),
            Some(&owner.access_token),
            None,
        )
        .await?;
    assert_eq!(bad_emoji.status, StatusCode::BAD_REQUEST);
    let delete = api
        .call(
            Method::DELETE,
            &msg_path,
            Some(&moderator.access_token),
            None,
        )
        .await?;
    assert_eq!(delete.status, StatusCode::OK, "{}", delete.body);
    assert_eq!(
        edit(&member).await?.status,
        StatusCode::NOT_FOUND,
        "deleted messages cannot be edited"
    );

    // Banned: gone from the room; in a private room it becomes invisible again.
    let ban = api
        .call(
            Method::POST,
            &path("/bans"),
            Some(&moderator.access_token),
            Some(json!({"user_id": member.user_id, "reason": "spam"})),
        )
        .await?;
    assert_eq!(ban.status, StatusCode::CREATED, "{}", ban.body);
    assert_eq!(
        api.post(&member, &private, &unique("c"), "hello?")
            .await?
            .status,
        StatusCode::NOT_FOUND
    );

    // Public room: a banned user is told so (403); a non-member must join first (403).
    let public = api.create_room(&owner, "public").await?;
    let stranger_post = api.post(&outsider, &public, &unique("c"), "hi").await?;
    assert_eq!(
        (stranger_post.status, stranger_post.code()),
        (StatusCode::FORBIDDEN, "not_a_member")
    );
    assert_eq!(api.join(&outsider, &public).await?.status, StatusCode::OK);
    let ban = api
        .call(
            Method::POST,
            &format!("/v1/rooms/{public}/bans"),
            Some(&owner.access_token),
            Some(json!({"user_id": outsider.user_id})),
        )
        .await?;
    assert_eq!(ban.status, StatusCode::CREATED);
    let banned_post = api
        .post(&outsider, &public, &unique("c"), "hi again")
        .await?;
    assert_eq!(
        (banned_post.status, banned_post.code()),
        (StatusCode::FORBIDDEN, "banned")
    );
    assert_eq!(
        api.join(&outsider, &public).await?.status,
        StatusCode::FORBIDDEN
    );

    // The log holds exactly the accepted changes, gap-free.
    let events = room_events(&private).await?;
    assert_gap_free(&events);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind().as_str()).collect();
    assert_eq!(
        kinds,
        [
            "room_created",
            "member_invited",
            "member_joined",
            "member_invited",
            "member_joined",
            "member_role_changed",
            "message_posted",
            "message_edited",
            "reaction_added",
            "message_deleted",
            "member_banned",
        ]
    );
    let actors: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e.envelope().actor_id.as_deref())
        .collect();
    assert!(!actors.contains(outsider.user_id.as_str()));
    Ok(())
}

/// The mark one instance puts on a request it forwards only stops a second forward: a client
/// that sets it itself is limited like any other.
#[tokio::test]
async fn the_forwarding_mark_does_not_lift_the_rate_limit() -> anyhow::Result<()> {
    let api = api();
    let user = api.user("markflood").await?;
    let room = api.create_room(&user, "public").await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/rooms/{room}/messages", env::commands_url());
    let answers = futures::future::join_all((0..60).map(|i| {
        http.post(&url)
            .bearer_auth(&user.access_token)
            .header("x-chat-forwarded", "1")
            .json(&json!({"client_msg_id": format!("m{i}"), "content": "flood"}))
            .send()
    }))
    .await;
    let mut statuses = BTreeMap::new();
    for answer in answers {
        *statuses.entry(answer?.status().as_u16()).or_insert(0) += 1;
    }
    assert!(
        statuses.get(&429).copied().unwrap_or(0) >= 20,
        "60 marked posts at once against a burst of 30: {statuses:?}"
    );
    Ok(())
}

#[tokio::test]
async fn posting_is_rate_limited_per_user() -> anyhow::Result<()> {
    let api = api();
    let user = api.user("flood").await?;
    let room = api.create_room(&user, "public").await?;
    let keys: Vec<String> = (0..60).map(|i| format!("f{i}")).collect();
    let answers =
        futures::future::join_all(keys.iter().map(|k| api.post(&user, &room, k, "flood"))).await;
    let limited: Vec<_> = answers
        .into_iter()
        .map(Result::unwrap)
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(
        !limited.is_empty(),
        "60 posts at once must exceed a burst of 30"
    );
    assert!(
        limited
            .iter()
            .all(|a| a.code() == "rate_limited" && a.retry_after.is_some())
    );
    // Someone else is not affected.
    let other = api.user("calm").await?;
    assert_eq!(api.join(&other, &room).await?.status, StatusCode::OK);
    assert_eq!(
        api.post(&other, &room, "o1", "hello").await?.status,
        StatusCode::CREATED
    );
    Ok(())
}
