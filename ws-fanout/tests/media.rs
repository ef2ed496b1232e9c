//! Real media through the platform: two WebRTC peers (the `webrtc` crate) in a 1:1 call set up
//! through our signaling (`test_support::call`: call commands over HTTP, `call.signal` frames
//! over the entry's sockets), once directly and once forced through coturn (relay-only ICE with
//! the credentials `POST /v1/calls/turn-credentials` hands out). Each peer sends Opus and VP8
//! RTP and a data-channel message; each must receive the other's RTP of both kinds and the
//! message, and the media must take the path asked for (relayed candidates, or none). And a
//! group call of three through the SFU (Janus), on a network the test makes for it
//! (`test_support::group::sfu_network`).

use std::time::{Duration, Instant};

use test_support::call::{Call, Rate};
use test_support::group::{Group, janus_rooms};
use test_support::{Api, User, env};

/// RTP packets of each kind a peer must receive from the other.
const PACKETS: usize = 25;

async fn call_and_exchange_media(relay_only: bool) -> anyhow::Result<()> {
    let api = Api::new(env::entry_url());
    let mut call = Call::set_up(&api, relay_only, Rate::default()).await?;
    let hellos = |c: &Call| {
        let caller = c
            .caller
            .received
            .messages
            .try_lock()
            .map(|m| m.contains(&"hello from callee".to_string()));
        let callee = c
            .callee
            .received
            .messages
            .try_lock()
            .map(|m| m.contains(&"hello from caller".to_string()));
        matches!((caller, callee), (Ok(true), Ok(true)))
    };
    call.until(Duration::from_secs(60), |c| {
        c.media_flowing(PACKETS) && hellos(c)
    })
    .await?;
    for (who, peer) in [("caller", &call.caller), ("callee", &call.callee)] {
        assert_eq!(
            peer.relayed().await?,
            relay_only,
            "{who}'s media path is relayed only when forced"
        );
    }
    call.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_call_carries_audio_video_and_data_both_ways() -> anyhow::Result<()> {
    call_and_exchange_media(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_forced_through_turn_carries_audio_video_and_data_both_ways() -> anyhow::Result<()> {
    call_and_exchange_media(true).await
}

/// Three peers in a group call through Janus: each publishes, each receives the other two's
/// audio and video. Then one is banned from the room: their Janus sessions go at once, so
/// nobody receives them any more and they receive nobody; the call's end destroys its room in
/// Janus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_call_through_the_sfu_carries_each_ones_media_to_the_other_two()
-> anyhow::Result<()> {
    let api = Api::new(env::entry_url());
    let mut group = Group::set_up(&api, 3, Rate::default()).await?;
    for i in 0..3 {
        group.publish(&api, i).await?;
    }
    group
        .until(&api, Duration::from_secs(60), |g| {
            g.everyone_hears(&[0, 1, 2], PACKETS)
        })
        .await?;
    assert!(
        janus_rooms().await?.contains(&group.call),
        "the call has its room in Janus"
    );

    // The owner bans the third: the other two stop receiving them.
    let banned = group.members[2].user.clone();
    let ban = api
        .ban(&group.members[0].user, &group.room, &banned)
        .await?;
    assert!(ban.status.is_success(), "ban: {} {}", ban.status, ban.body);
    let cut = |g: &Group| [g.video_from(0, 2), g.video_from(1, 2)];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = cut(&group);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = cut(&group);
        if before == after {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the banned participant's media still flows: {before:?} -> {after:?}"
        );
    }
    let refused = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/calls/{}/sfu/publish", group.call),
            Some(&banned.access_token),
            Some(serde_json::json!({"sdp": "v=0\r\n"})),
        )
        .await?;
    assert_eq!(
        refused.status, 403,
        "a banned participant cannot publish again: {}",
        refused.body
    );
    // The two left still hear each other.
    for i in 0..2 {
        group.members[i]
            .receiving
            .values()
            .for_each(|p| p.received.restart());
    }
    group
        .until(&api, Duration::from_secs(20), |g| {
            g.everyone_hears(&[0, 1], PACKETS)
        })
        .await?;

    // Ending the call destroys its room.
    let ended = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/rooms/{}/calls/{}/end", group.room, group.call),
            Some(&group.members[0].user.access_token),
            None,
        )
        .await?;
    assert!(
        ended.status.is_success(),
        "end: {} {}",
        ended.status,
        ended.body
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while janus_rooms().await?.contains(&group.call) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the ended call's room is still in Janus"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    group.close().await;
    Ok(())
}

/// Who may use a call's SFU routes: anonymous, stranger, banned, a moderator not in the call
/// are refused; a participant's malformed or oversized SDP, subscriptions to themselves, to
/// someone not in the call or not publishing, answers to offers never made, SFU routes of a
/// peer-to-peer call, and too many requests get their own errors.
#[tokio::test]
async fn who_may_use_a_calls_sfu() -> anyhow::Result<()> {
    use reqwest::{Method, StatusCode};
    use serde_json::json;
    let api = Api::new(env::entry_url());
    let owner = api.with_fresh_address().user("sfuauth").await?;
    let moderator = api.with_fresh_address().user("sfuauth").await?;
    let member = api.with_fresh_address().user("sfuauth").await?;
    let banned = api.with_fresh_address().user("sfuauth").await?;
    let stranger = api.with_fresh_address().user("sfuauth").await?;
    let room = api.create_room(&owner, "private").await?;
    api.invite_and_join(&owner, &room, &[&moderator, &member, &banned])
        .await?;
    let promoted = api.set_role(&owner, &room, &moderator, "moderator").await?;
    assert!(promoted.status.is_success(), "{}", promoted.body);
    let call = api.start_call(&owner, &room).await?;
    api.join_call(&member, &room, &call).await?;
    api.join_call(&banned, &room, &call).await?;
    let ban = api.ban(&owner, &room, &banned).await?;
    assert!(ban.status.is_success(), "{}", ban.body);

    let sfu = |user: Option<&User>, call: &str, action: &str, body: serde_json::Value| {
        let (api, token) = (&api, user.map(|u| u.access_token.clone()));
        let path = format!("/v1/calls/{call}/sfu/{action}");
        async move {
            api.call(Method::POST, &path, token.as_deref(), Some(body))
                .await
        }
    };
    let sdp = json!({"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"});
    let anonymous = sfu(None, &call, "publish", sdp.clone()).await?;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    for outsider in [&stranger, &banned, &moderator] {
        let refused = sfu(Some(outsider), &call, "publish", sdp.clone()).await?;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::FORBIDDEN, "not_in_call"),
            "{}",
            refused.body
        );
    }
    let bad = sfu(Some(&member), &call, "publish", json!({"sdp": "hello"})).await?;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::BAD_REQUEST, "invalid_input")
    );
    let huge = format!("v=0\r\n{}", "a=x\r\n".repeat(5000));
    let big = sfu(Some(&member), &call, "publish", json!({ "sdp": huge })).await?;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", big.body);
    let themselves = sfu(
        Some(&owner),
        &call,
        "subscribe",
        json!({"feed": owner.user_id}),
    )
    .await?;
    assert_eq!(themselves.status, StatusCode::BAD_REQUEST);
    let outside = sfu(
        Some(&owner),
        &call,
        "subscribe",
        json!({"feed": moderator.user_id}),
    )
    .await?;
    assert_eq!(
        (outside.status, outside.code()),
        (StatusCode::CONFLICT, "peer_not_in_call")
    );
    let silent = sfu(
        Some(&owner),
        &call,
        "subscribe",
        json!({"feed": member.user_id}),
    )
    .await?;
    assert_eq!(
        (silent.status, silent.code()),
        (StatusCode::CONFLICT, "feed_not_found"),
        "{}",
        silent.body
    );
    let unasked = sfu(
        Some(&owner),
        &call,
        "start",
        json!({"feed": member.user_id, "sdp": "v=0\r\n"}),
    )
    .await?;
    assert_eq!(
        (unasked.status, unasked.code()),
        (StatusCode::CONFLICT, "not_subscribed")
    );
    let unknown = sfu(
        Some(&owner),
        "0193a7a0-0000-7000-8000-0000000000aa",
        "publish",
        sdp.clone(),
    )
    .await?;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::NOT_FOUND, "call_not_found")
    );

    // A call between two is peer to peer: no SFU.
    let pair = api.create_room(&stranger, "private").await?;
    api.invite_and_join(&stranger, &pair, &[&moderator]).await?;
    let direct = api.start_call(&stranger, &pair).await?;
    let p2p = sfu(Some(&stranger), &direct, "publish", sdp.clone()).await?;
    assert_eq!(
        (p2p.status, p2p.code()),
        (StatusCode::CONFLICT, "not_an_sfu_call")
    );

    // The budget: a script hammering the routes is told to wait.
    let mut limited = None;
    for _ in 0..150 {
        let answer = sfu(
            Some(&member),
            &call,
            "start",
            json!({"feed": owner.user_id, "sdp": "v=0\r\n"}),
        )
        .await?;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("the SFU budget runs out");
    assert_eq!(limited.code(), "rate_limited");
    assert!(limited.retry_after.is_some());
    Ok(())
}
