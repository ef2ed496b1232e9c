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

    // Unknown API paths get the JSON error shape (other paths are the web client's).
    let response = reqwest::get(format!("{entry}/v1/nowhere")).await?;
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "not_found");
    Ok(())
}

/// The entry's own guards: security headers on every answer, small bodies except for uploads,
/// and a flood guard on the credential endpoints per client address, each refusal in the API's
/// error shape. (Bodies of `{}` are refused by the commands tier without counting as a failed
/// login, so the flood locks no account or address for the other tests.)
#[tokio::test]
async fn the_entry_sets_security_headers_bounds_bodies_and_floods() -> anyhow::Result<()> {
    let entry = env::entry_url();
    let http = reqwest::Client::new();

    let health = http.get(format!("{entry}/healthz")).send().await?;
    let headers = health.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert!(
        headers["content-security-policy"]
            .to_str()?
            .contains("default-src 'none'")
    );
    assert!(
        headers
            .get("server")
            .is_none_or(|s| !s.to_str().unwrap_or("").contains('.'))
    );

    // The web client at `/` (any client-side route too), under a policy that runs only the
    // app's own files: no inline script or style, no eval, connections to this origin.
    for path in ["/", "/r/some-room"] {
        let app = http.get(format!("{entry}{path}")).send().await?;
        assert_eq!(app.status(), 200, "{path}");
        let policy = app.headers()["content-security-policy"]
            .to_str()?
            .to_string();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{policy}");
        }
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(app.headers()["x-frame-options"], "DENY");
        let html = app.text().await?;
        assert!(html.contains("<div id=\"root\">"), "{html}");
        assert!(
            !html.contains("<script>") && !html.contains("<style"),
            "nothing inline: {html}"
        );
    }

    // A 200 kB JSON body where 64 kB are taken: refused at the entry.
    let api = Api::new(&entry);
    let user = api.user("entrybody").await?;
    let big = json!({"name": "x".repeat(200 * 1024), "visibility": "public"});
    let refused = http
        .post(format!("{entry}/v1/rooms"))
        .bearer_auth(&user.access_token)
        .json(&big)
        .send()
        .await?;
    assert_eq!(refused.status(), 413);
    let body: serde_json::Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "payload_too_large");

    // Uploads still take megabytes.
    let upload = common::upload(
        &http,
        &user.access_token,
        "big.txt",
        vec![b'a'; 1024 * 1024],
    )
    .await?;
    assert_eq!(upload.status(), 201);

    // A flood of the credential endpoints from one address.
    let answers = futures::future::join_all((0..150).map(|_| {
        http.post(format!("{entry}/v1/auth/register"))
            .json(&json!({}))
            .send()
    }))
    .await;
    let mut limited = 0;
    for answer in answers {
        let answer = answer?;
        if answer.status() == 429 {
            assert!(answer.headers().contains_key("retry-after"));
            let body: serde_json::Value = answer.json().await?;
            assert_eq!(body["error"]["code"], "rate_limited");
            limited += 1;
        } else {
            assert_eq!(answer.status(), 400, "an empty registration is invalid");
        }
    }
    assert!(
        limited >= 50,
        "150 at once against a burst of 60: {limited} limited"
    );
    // The budget refills: a moment later registration works again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    api.user("entryafter").await?;
    Ok(())
}
