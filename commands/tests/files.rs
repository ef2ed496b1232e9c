//! Uploads and attachments against the running commands tier.

use std::time::Duration;

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
    let digest = hex::encode(Sha256::digest(PNG));
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

fn files_dir() -> std::path::PathBuf {
    match std::env::var("CHAT_FILES_DIR") {
        Ok(dir) if !dir.is_empty() => dir.into(),
        _ => std::path::PathBuf::from(std::env::var("CHAT_STATE_DIR").unwrap_or_default())
            .join("files"),
    }
}

async fn identity_db() -> anyhow::Result<(sqlx::PgPool, String)> {
    let schema = std::env::var("CHAT_COMMANDS_PG_SCHEMA").unwrap_or_else(|_| "identity".into());
    Ok((sqlx::PgPool::connect(&env::pg_url()).await?, schema))
}

/// A user's stored files add up to at most their quota: an upload that would pass it is
/// refused (413 `quota_exceeded`), a smaller one still fits. (The
/// user is brought near the quota by a row in the file store's table, not by a gigabyte of
/// uploads.)
#[tokio::test]
async fn uploads_stop_at_the_users_quota() -> anyhow::Result<()> {
    let user = Api::new(env::commands_url()).user("quota").await?;
    let quota: i64 = std::env::var("CHAT_UPLOAD_QUOTA_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024 * 1024 * 1024);
    let (pool, schema) = identity_db().await?;
    sqlx::query(&format!(
        "INSERT INTO {schema}.files (id, uploader_id, filename, size, mime_type, sha256, attached_at) \
         VALUES ($1, $2, 'big.bin', $3, 'application/octet-stream', '', now())"
    ))
    .bind(uuid::Uuid::now_v7())
    .bind(uuid::Uuid::parse_str(&user.user_id)?)
    .bind(quota - 50)
    .execute(&pool)
    .await?;
    let (status, body) = upload(Some(&user), file(vec![b'a'; 100], "a.txt", "text/plain")).await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    let (status, body) = upload(Some(&user), file(vec![b'a'; 40], "b.txt", "text/plain")).await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = upload(Some(&user), file(vec![b'a'; 40], "c.txt", "text/plain")).await?;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "40 + 40 is past the 50 left"
    );
    Ok(())
}

/// A client that hangs up halfway through an upload (through the entry) leaves no partial
/// file behind.
#[tokio::test]
async fn an_upload_the_client_abandons_leaves_nothing_behind() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let user = Api::new(env::commands_url()).user("abandon").await?;
    let tmp = files_dir().join("tmp");
    let entry = reqwest::Url::parse(&env::entry_url())?;
    let address = format!(
        "{}:{}",
        entry.host_str().unwrap_or("127.0.0.1"),
        entry.port_or_known_default().unwrap_or(80)
    );
    let boundary = "xxabandonxx";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let declared = head.len() + 10 * 1024 * 1024;
    let mut stream = tokio::net::TcpStream::connect(&address).await?;
    stream
        .write_all(
            format!(
                "POST /v1/files HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n{head}",
                user.access_token
            )
            .as_bytes(),
        )
        .await?;
    let chunk = vec![0u8; 64 * 1024];
    let mut started = false;
    for _ in 0..32 {
        stream.write_all(&chunk).await?;
        stream.flush().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if std::fs::read_dir(&tmp)?.count() > 0 {
            started = true;
        }
    }
    // The upload is being written (other tests' uploads may be too); the client hangs up.
    assert!(started, "no partial file appeared in {}", tmp.display());
    let partial: Vec<_> = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    drop(stream);
    test_support::wait_for(
        "the partial upload to be removed",
        Duration::from_secs(30),
        || async { partial.iter().all(|p| !p.exists()).then_some(()) },
    )
    .await?;
    Ok(())
}

/// An upload no post names within the grace period is deleted (row and bytes); one a post
/// names stays. (Both are made older than the grace period in the file store's table.)
#[tokio::test]
async fn uploads_no_post_names_are_collected_after_the_grace_period() -> anyhow::Result<()> {
    let api = Api::new(env::commands_url());
    let user = api.user("collect").await?;
    let room = api.create_room(&user, "public").await?;
    let (_, kept) = upload(
        Some(&user),
        file(b"kept".to_vec(), "kept.txt", "text/plain"),
    )
    .await?;
    let (_, orphan) = upload(Some(&user), file(b"orphan".to_vec(), "o.txt", "text/plain")).await?;
    let id = |v: &Value| uuid::Uuid::parse_str(v["file_id"].as_str().unwrap_or_default());
    let (kept, orphan) = (id(&kept)?, id(&orphan)?);
    let posted = api
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/messages"),
            Some(&user.access_token),
            Some(json!({"client_msg_id": unique("c"), "content": "kept", "attachments": [kept.to_string()]})),
        )
        .await?;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    let (pool, schema) = identity_db().await?;
    sqlx::query(&format!(
        "UPDATE {schema}.files SET created_at = now() - interval '30 days' WHERE id = ANY($1)"
    ))
    .bind(vec![kept, orphan])
    .execute(&pool)
    .await?;
    let bytes = |file: &uuid::Uuid| {
        platform::files::path_of(&files_dir(), &file.simple().to_string())
            .is_some_and(|p| p.exists())
    };
    assert!(bytes(&orphan) && bytes(&kept));
    let row = |file: uuid::Uuid| {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move {
            sqlx::query_scalar::<_, i64>(&format!(
                "SELECT count(*) FROM {schema}.files WHERE id = $1"
            ))
            .bind(file)
            .fetch_one(&pool)
            .await
        }
    };
    test_support::wait_for(
        "the orphan to be collected",
        Duration::from_secs(90),
        || async { (row(orphan).await.ok()? == 0).then_some(()) },
    )
    .await?;
    // Rows go first, bytes right after: wait for the second step rather than race it.
    test_support::wait_for(
        "the orphan's bytes to be removed",
        Duration::from_secs(10),
        || async { (!bytes(&orphan)).then_some(()) },
    )
    .await?;
    assert_eq!(row(kept).await?, 1);
    assert!(bytes(&kept));
    // The collected file can no longer be attached.
    let late = api
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/messages"),
            Some(&user.access_token),
            Some(json!({"client_msg_id": unique("c"), "content": "late", "attachments": [orphan.to_string()]})),
        )
        .await?;
    assert_eq!(late.status, StatusCode::BAD_REQUEST, "{}", late.body);
    Ok(())
}
