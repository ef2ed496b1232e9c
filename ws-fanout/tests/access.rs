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
