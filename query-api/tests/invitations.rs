//! Invitations as a person meets them: invited by username (what people know each other by),
//! the invitation listed (`GET /v1/rooms?scope=invited`) so a client can offer to join, gone
//! from the list once joined; and who may invite or see an invitation (anonymous, non-member,
//! member, banned, moderator, owner).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::{Api, User, env, wait_for};

const T: Duration = Duration::from_secs(60);

async fn listed(query: &Api, user: &User, scope: &str) -> anyhow::Result<Vec<String>> {
    let answer = query
        .call(
            Method::GET,
            &format!("/v1/rooms?scope={scope}"),
            Some(&user.access_token),
            None,
        )
        .await?;
    anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.body);
    Ok(answer
        .body
        .as_array()
        .map(|rooms| {
            rooms
                .iter()
                .filter_map(|r| r["room_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

#[tokio::test]
async fn invitations_by_username_are_listed_until_joined() -> anyhow::Result<()> {
    let commands = Api::new(env::commands_url());
    let query = Api::new(env::query_url());
    let owner = commands.user("inv").await?;
    let moderator = commands.user("inv").await?;
    let member = commands.user("inv").await?;
    let banned = commands.user("inv").await?;
    let stranger = commands.user("inv").await?;
    let invitee = commands.user("inv").await?;
    let second = commands.user("inv").await?;
    let room = commands.create_room(&owner, "private").await?;
    let invites = format!("/v1/rooms/{room}/invites");
    let invite = |who: &User, body: Value| {
        let (commands, invites, token) = (&commands, &invites, who.access_token.clone());
        async move {
            commands
                .call(Method::POST, invites, Some(&token), Some(body))
                .await
        }
    };
    for user in [&moderator, &member, &banned] {
        let answer = invite(&owner, json!({"username": user.username})).await?;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        assert_eq!(commands.join(user, &room).await?.status, StatusCode::OK);
    }
    let promote = commands
        .set_role(&owner, &room, &moderator, "moderator")
        .await?;
    assert_eq!(promote.status, StatusCode::OK, "{}", promote.body);
    let ban = commands.ban(&owner, &room, &banned).await?;
    assert_eq!(ban.status, StatusCode::CREATED, "{}", ban.body);

    // Who may invite to a private room: owner and moderators; others are refused.
    let anonymous = commands
        .call(
            Method::POST,
            &invites,
            None,
            Some(json!({"username": invitee.username})),
        )
        .await?;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let by_stranger = invite(&stranger, json!({"username": invitee.username})).await?;
    assert_eq!(
        by_stranger.status,
        StatusCode::NOT_FOUND,
        "{}",
        by_stranger.body
    );
    let by_member = invite(&member, json!({"username": invitee.username})).await?;
    assert_eq!(
        by_member.status,
        StatusCode::FORBIDDEN,
        "{}",
        by_member.body
    );
    let by_banned = invite(&banned, json!({"username": invitee.username})).await?;
    assert!(
        [StatusCode::FORBIDDEN, StatusCode::NOT_FOUND].contains(&by_banned.status),
        "{}",
        by_banned.body
    );
    // A username in any case names the account; an unknown one is 404; one of the two fields.
    let by_owner = invite(&owner, json!({"username": invitee.username.to_uppercase()})).await?;
    assert_eq!(by_owner.status, StatusCode::CREATED, "{}", by_owner.body);
    let by_moderator = invite(&moderator, json!({"username": second.username})).await?;
    assert_eq!(
        by_moderator.status,
        StatusCode::CREATED,
        "{}",
        by_moderator.body
    );
    let unknown = invite(&owner, json!({"username": "nobody_by_this_name"})).await?;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::NOT_FOUND, "user_not_found")
    );
    for body in [
        json!({}),
        json!({"username": invitee.username, "user_id": invitee.user_id}),
        json!({"username": "a b"}),
        json!({"username": 7}),
    ] {
        let answer = invite(&owner, body.clone()).await?;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.body
        );
        assert_eq!(answer.code(), "invalid_input", "{body}");
    }

    // The invitee (and only the invitee) finds the invitation, with the room's name.
    wait_for("the invitation listed", T, || async {
        let rooms = listed(&query, &invitee, "invited").await.ok()?;
        rooms.contains(&room).then_some(())
    })
    .await?;
    let answer = query
        .call(
            Method::GET,
            "/v1/rooms?scope=invited",
            Some(&invitee.access_token),
            None,
        )
        .await?;
    let entry = answer
        .body
        .as_array()
        .and_then(|rooms| rooms.iter().find(|r| r["room_id"] == room.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["visibility"], "private", "{entry}");
    assert!(
        entry["name"].as_str().is_some_and(|n| !n.is_empty()),
        "{entry}"
    );
    for other in [&stranger, &member, &owner, &banned] {
        assert!(!listed(&query, other, "invited").await?.contains(&room));
    }
    let anonymous = query
        .call(Method::GET, "/v1/rooms?scope=invited", None, None)
        .await?;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let bad_scope = query
        .call(
            Method::GET,
            "/v1/rooms?scope=everything",
            Some(&invitee.access_token),
            None,
        )
        .await?;
    assert_eq!(bad_scope.status, StatusCode::BAD_REQUEST);

    // Joined: it moves from the invitations to the caller's rooms.
    assert_eq!(commands.join(&invitee, &room).await?.status, StatusCode::OK);
    wait_for("the invitation to become a membership", T, || async {
        let invited = listed(&query, &invitee, "invited").await.ok()?;
        let joined = listed(&query, &invitee, "joined").await.ok()?;
        (!invited.contains(&room) && joined.contains(&room)).then_some(())
    })
    .await?;
    Ok(())
}
