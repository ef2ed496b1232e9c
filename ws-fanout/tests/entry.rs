//! nginx as the stack's single entry point: identity and writes reach the commands tier, reads
//! the query API, sockets and long polls the fan-out nodes, all through one address.

mod common;

use std::time::Duration;

use common::Client;
use serde_json::json;
use test_support::{Api, env};

const T: Duration = Duration::from_secs(120);

#[tokio::test]
async fn one_address_serves_identity_writes_reads_sockets_and_polls() -> anyhow::Result<()> {
    let entry = env::entry_url();
    let api = Api::new(&entry);
    // Identity (commands) and a write (commands).
    let user = api.user("entry").await?;
    let room = api.create_room(&user, "public").await?;
    // A read (query-api), once projected.
    test_support::wait_for("the room through the read API", T, || async {
        let answer = api
            .call(
                reqwest::Method::GET,
                &format!("/v1/rooms/{room}"),
                Some(&user.access_token),
                None,
            )
            .await
            .ok()?;
        answer.status.is_success().then_some(answer)
    })
    .await?;

    // A socket through the entry sees a message posted through the entry.
    let ws = format!("{}/v1/ws", entry.replacen("http", "ws", 1));
    let mut socket = Client::connect(&ws, Some(&user.access_token)).await?;
    socket
        .send(json!({"type": "subscribe", "room_id": room, "since_seq": 0}))
        .await?;
    socket.until("subscribed", T).await?;
    let posted = api
        .post_until_accepted(&user, &room, "entry-1", "through nginx", T)
        .await?;
    let seq = posted["seq"].as_i64().unwrap_or_default();
    loop {
        let event = socket.until("event", T).await?;
        if event["seq"] == seq {
            assert_eq!(event["event"]["content"], "through nginx");
            break;
        }
    }

    // A long poll through the entry returns the same event.
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{entry}/v1/poll?room_id={room}&since_seq={}&wait_ms=1000",
            seq - 1
        ))
        .bearer_auth(&user.access_token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(body["events"][0]["seq"], seq, "{body}");

    // Unknown paths get the JSON error shape from the entry itself.
    let response = reqwest::get(format!("{entry}/nowhere")).await?;
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "not_found");
    Ok(())
}
