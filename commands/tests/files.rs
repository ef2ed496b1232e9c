//! Uploads and attachments against the running commands tier.

use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use schemas::DomainEvent;
use schemas::events::MessageType;
use schemas::topics::ROOM_EVENTS;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use test_support::{Api, User, env, unique};

const PNG: [u8; 33] = [
    0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, b'I', b'H', b'D', b'R', 0, 0, 0,
    1, 0, 0, 0, 1, 8, 2, 0, 0, 0, 0x90, 0x77, 0x53, 0xDE,
];

async fn upload(user: Option<&User>, form: Form) -> anyhow::Result<(StatusCode, Value)> {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/files", env::commands_url()))
        .multipart(form);
    if let Some(user) = user {
        request = request.bearer_auth(&user.access_token);
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn file(bytes: Vec<u8>, name: &str, claimed_type: &str) -> Form {
    Form::new().part(
        "file",
        Part::bytes(bytes)
            .file_name(name.to_string())
            .mime_str(claimed_type)
            .unwrap(),
    )
}

#[tokio::test]
async fn uploads_are_sniffed_named_safely_and_hashed() -> anyhow::Result<()> {
    let api = Api::new(env::commands_url());
    let user = api.user("up").await?;
    let (status, body) = upload(
        Some(&user),
        file(PNG.to_vec(), "../../secret/cat.png", "text/plain"),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["mime_type"], "image/png",
        "the bytes decide, not the client"
    );
    assert_eq!(body["filename"], "cat.png");
    assert_eq!(body["size"], PNG.len());
    let digest: String = Sha256::digest(PNG)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(body["sha256"], digest);
    assert_eq!(
        body["url"],
        format!("/v1/files/{}", body["file_id"].as_str().unwrap())
    );

    let (status, text) = upload(
        Some(&user),
        file(
            "plain words, ünïcode".as_bytes().to_vec(),
            "notes.exe",
            "application/x-msdownload",
        ),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(text["mime_type"], "text/plain");
    Ok(())
}

#[tokio::test]
async fn bad_uploads_are_refused() -> anyhow::Result<()> {
    let api = Api::new(env::commands_url());
    let user = api.user("upbad").await?;
    let (status, body) = upload(None, file(PNG.to_vec(), "a.png", "image/png")).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = upload(Some(&user), Form::new().text("not_file", "x")).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input")),
        "{body}"
    );
    // 25 MiB is the default limit.
    let (status, body) = upload(
        Some(&user),
        file(
            vec![7u8; 25 * 1024 * 1024 + 1],
            "big.bin",
            "application/octet-stream",
        ),
    )
    .await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    let not_multipart = api
        .raw(
            Method::POST,
            "/v1/files",
            Some(&user.access_token),
            "application/json",
            b"{}".to_vec(),
        )
        .await?;
    assert_eq!(
        not_multipart.status,
        StatusCode::BAD_REQUEST,
        "{}",
        not_multipart.body
    );
    // Still serving.
    let (status, _) = upload(Some(&user), file(PNG.to_vec(), "ok.png", "image/png")).await?;
    assert_eq!(status, StatusCode::CREATED);
    Ok(())
}

#[tokio::test]
async fn posts_carry_their_own_uploads_and_only_those() -> anyhow::Result<()> {
    let api = Api::new(env::commands_url());
    let alice = api.user("att").await?;
    let mallory = api.user("thief").await?;
    let room = api.create_room(&alice, "public").await?;
    assert_eq!(api.join(&mallory, &room).await?.status, StatusCode::OK);
    let (_, png) = upload(Some(&alice), file(PNG.to_vec(), "cat.png", "image/png")).await?;
    let png_id = png["file_id"].as_str().unwrap().to_string();

    let post = |user: &User, ids: Vec<String>| {
        let (api, room, token) = (api.clone(), room.clone(), user.access_token.clone());
        async move {
            api.call(
                Method::POST,
                &format!("/v1/rooms/{room}/messages"),
                Some(&token),
                Some(json!({"client_msg_id": unique("c"), "content": "look", "attachments": ids})),
            )
            .await
        }
    };
    let stolen = post(&mallory, vec![png_id.clone()]).await?;
    assert_eq!(
        stolen.status,
        StatusCode::BAD_REQUEST,
        "another user's upload: {}",
        stolen.body
    );
    assert_eq!(
        post(&alice, vec![uuid::Uuid::now_v7().to_string()])
            .await?
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(&alice, vec!["nope".into()]).await?.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(&alice, vec![png_id.clone(), png_id.clone()])
            .await?
            .status,
        StatusCode::BAD_REQUEST
    );
    let accepted = post(&alice, vec![png_id.clone()]).await?;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.body);

    let events = test_support::log::read_key(
        &env::kafka_brokers(),
        &env::registry_url(),
        ROOM_EVENTS,
        &room,
    )
    .await?;
    let tail: Vec<&DomainEvent> = events.iter().rev().take(2).collect();
    let (DomainEvent::MessagePosted(posted), DomainEvent::AttachmentUploaded(shared)) =
        (tail[0], tail[1])
    else {
        panic!(
            "expected AttachmentUploaded then MessagePosted, got {:?}",
            tail.iter().map(|e| e.kind()).collect::<Vec<_>>()
        );
    };
    assert_eq!(shared.file_id, png_id);
    assert_eq!(shared.mime_type, "image/png");
    assert_eq!(
        shared.envelope.seq.unwrap() + 1,
        posted.envelope.seq.unwrap()
    );
    assert_eq!(posted.message_type, MessageType::Image);
    assert_eq!(posted.attachments.len(), 1);
    assert_eq!(posted.attachments[0].file_id, png_id);
    assert_eq!(accepted.body["seq"], posted.envelope.seq.unwrap());
    Ok(())
}
