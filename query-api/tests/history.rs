//! The read side end to end: commands write through the real broker, the projector fills the
//! real MongoDB, and query-api pages and searches it exactly as the writes said.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::{Api, User, env, wait_for, wait_progressing};

#[derive(Debug, Clone, PartialEq)]
struct Expected {
    seq: i64,
    content: String,
    deleted: bool,
    edited: bool,
    thumbs: Vec<String>,
}

struct Room {
    id: String,
    private: bool,
    members: Vec<User>,
    messages: BTreeMap<String, Expected>,
    last_seq: i64,
}

fn content_for(room: usize, i: usize) -> String {
    match i % 5 {
        0 => format!("Crème Brûlée number {i} in room {room}"),
        1 => format!("今日は東京タワーに行きました {i}"),
        2 => format!("plain message {i} of room {room}"),
        3 => format!("CAFÉ au lait #{i}"),
        _ => format!("Mixed CASE Words {i}"),
    }
}

/// One command, retried like a client does on 503 (`Retry-After`, same request): under the
/// suite's load a commit can outlast the write tier's 10 s answer timeout while it still lands.
/// Every command here is idempotent on retry (reactions and deletes answer a no-op, an edit
/// writes the same content again), and commands of a room are sent one at a time, so a no-op
/// answer to a retry means the first attempt took the next seq.
async fn command(
    commands: &Api,
    user: &User,
    method: Method,
    path: &str,
    body: Option<Value>,
    last_seq: i64,
) -> anyhow::Result<i64> {
    for _ in 0..5 {
        let answer = commands
            .call(method.clone(), path, Some(&user.access_token), body.clone())
            .await?;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            tokio::time::sleep(Duration::from_secs(answer.retry_after.unwrap_or(1))).await;
            continue;
        }
        anyhow::ensure!(
            answer.status.is_success(),
            "{path}: {} {}",
            answer.status,
            answer.body
        );
        return Ok(answer.body["seq"].as_i64().unwrap_or(last_seq + 1));
    }
    anyhow::bail!("{path}: still unavailable after 5 attempts")
}

/// Builds 5 rooms (the last private) with 2,000 messages, edits, deletes and reactions, and
/// returns what each room must look like.
async fn populate(commands: &Api) -> anyhow::Result<Vec<Room>> {
    let mut rooms = Vec::new();
    for r in 0..5 {
        let private = r == 4;
        let owner = commands.user("hist").await?;
        let id = commands
            .create_room(&owner, if private { "private" } else { "public" })
            .await?;
        let mut members = vec![owner.clone()];
        for _ in 0..4 {
            let user = commands.user("hist").await?;
            if private {
                command(
                    commands,
                    &owner,
                    Method::POST,
                    &format!("/v1/rooms/{id}/invites"),
                    Some(json!({"user_id": user.user_id})),
                    0,
                )
                .await?;
            }
            assert_eq!(commands.join(&user, &id).await?.status, StatusCode::OK);
            members.push(user);
        }
        rooms.push(Room {
            id,
            private,
            members,
            messages: BTreeMap::new(),
            last_seq: 0,
        });
    }
    let tasks: Vec<_> = rooms
        .iter()
        .enumerate()
        .map(|(r, room)| {
            let (commands, id, members) = (commands.clone(), room.id.clone(), room.members.clone());
            tokio::spawn(async move {
                let mut messages = BTreeMap::new();
                let mut last_seq = 0;
                for i in 0..400 {
                    let author = &members[i % members.len()];
                    let content = content_for(r, i);
                    let body = commands
                        .post_until_accepted(
                            author,
                            &id,
                            &format!("m{i}"),
                            &content,
                            Duration::from_secs(60),
                        )
                        .await?;
                    let message_id = body["message_id"].as_str().unwrap().to_string();
                    last_seq = body["seq"].as_i64().unwrap();
                    let mut expected = Expected {
                        seq: last_seq,
                        content,
                        deleted: false,
                        edited: false,
                        thumbs: vec![],
                    };
                    let path = format!("/v1/rooms/{id}/messages/{message_id}");
                    if i % 10 == 0 {
                        expected.content = format!("{} (edited)", expected.content);
                        last_seq = command(
                            &commands,
                            author,
                            Method::PATCH,
                            &path,
                            Some(json!({"content": expected.content})),
                            last_seq,
                        )
                        .await?;
                        expected.edited = true;
                    }
                    if i % 7 == 0 {
                        let fan = &members[(i + 1) % members.len()];
                        last_seq = command(
                            &commands,
                            fan,
                            Method::PUT,
                            &format!("{path}/reactions/%F0%9F%91%8D"),
                            None,
                            last_seq,
                        )
                        .await?;
                        expected.thumbs.push(fan.user_id.clone());
                        if i % 21 == 0 {
                            last_seq = command(
                                &commands,
                                fan,
                                Method::DELETE,
                                &format!("{path}/reactions/%F0%9F%91%8D"),
                                None,
                                last_seq,
                            )
                            .await?;
                            expected.thumbs.clear();
                        }
                    }
                    if i % 15 == 0 {
                        last_seq =
                            command(&commands, author, Method::DELETE, &path, None, last_seq)
                                .await?;
                        expected.deleted = true;
                        expected.content = String::new();
                        expected.thumbs.clear();
                    }
                    messages.insert(message_id, expected);
                }
                anyhow::Ok((messages, last_seq))
            })
        })
        .collect();
    for (room, task) in rooms.iter_mut().zip(tasks) {
        let (messages, last_seq) = task.await??;
        room.messages = messages;
        room.last_seq = last_seq;
    }
    Ok(rooms)
}

async fn get(query: &Api, user: &User, path: &str) -> anyhow::Result<test_support::Answer> {
    query
        .call(Method::GET, path, Some(&user.access_token), None)
        .await
}

fn check_message(m: &Value, expected: &Expected) {
    let id = m["message_id"].as_str().unwrap();
    assert_eq!(m["seq"], expected.seq, "{id}");
    assert_eq!(m["content"], expected.content.as_str(), "{id}");
    assert_eq!(m["deleted"], expected.deleted, "{id}");
    assert_eq!(!m["edited_at"].is_null(), expected.edited, "{id}");
    let thumbs: Vec<String> = m["reactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["emoji"] == "👍")
        .flat_map(|r| {
            r["user_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(thumbs, expected.thumbs, "{id}");
}

#[tokio::test]
async fn history_and_search_match_what_was_written() -> anyhow::Result<()> {
    // One user writing and reading thousands of times: past any person's budget, so the
    // clients wait out 429s as real clients do (the budgets have their own tests).
    let commands = Api::new(env::commands_url()).patient();
    let query = Api::new(env::query_url()).patient();
    let rooms = populate(&commands).await?;

    // The projection catches up (eventual consistency, bounded wait).
    for room in &rooms {
        let reader = &room.members[1];
        wait_progressing(
            &format!("room {} projected", room.id),
            room.last_seq,
            Duration::from_secs(120),
            || async {
                let detail = get(&query, reader, &format!("/v1/rooms/{}", room.id))
                    .await
                    .ok()?;
                detail.body["last_seq"].as_i64()
            },
        )
        .await?;
    }

    for room in &rooms {
        let reader = &room.members[2];
        // Newest first, paged back with next_before.
        let mut seen = Vec::new();
        let mut path = format!("/v1/rooms/{}/messages?limit=50", room.id);
        loop {
            let page = get(&query, reader, &path).await?;
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
            let messages = page.body["messages"].as_array().unwrap().clone();
            seen.extend(messages);
            match page.body["next_before"].as_i64() {
                Some(before) => {
                    path = format!("/v1/rooms/{}/messages?limit=50&before={before}", room.id)
                }
                None => break,
            }
        }
        assert_eq!(seen.len(), 400, "room {}", room.id);
        let seqs: Vec<i64> = seen.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] > w[1]),
            "newest first, strictly"
        );
        for m in &seen {
            let expected = room
                .messages
                .get(m["message_id"].as_str().unwrap())
                .expect("a message that was posted");
            check_message(m, expected);
        }
        // Oldest first with after: the same messages in the opposite order.
        let first = get(
            &query,
            reader,
            &format!("/v1/rooms/{}/messages?after=0&limit=200", room.id),
        )
        .await?;
        let ascending: Vec<i64> = first.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(ascending.len(), 200);
        assert_eq!(
            ascending,
            seqs.iter().rev().take(200).copied().collect::<Vec<_>>()
        );
        assert!(first.body["next_after"].is_i64());
    }

    // Search: case and accents folded, CJK by substring, only readable rooms.
    let private = rooms.iter().find(|r| r.private).unwrap();
    let public = rooms.iter().find(|r| !r.private).unwrap();
    let insider = &private.members[1];
    let search = |user: &User, q: &str| {
        let (query, token, q) = (query.clone(), user.access_token.clone(), q.to_string());
        async move {
            let path = format!("/v1/search?q={}&limit=100", urlencode(&q));
            query.call(Method::GET, &path, Some(&token), None).await
        }
    };
    let expected_creme = private
        .messages
        .values()
        .filter(|e| !e.deleted && e.content.contains("Crème"))
        .count();
    let found = search(insider, "CREME brulee").await?;
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    let hits = found.body["messages"].as_array().unwrap();
    assert_eq!(hits.len(), expected_creme.min(100));
    assert!(
        hits.iter().all(|m| m["room_id"] == private.id.as_str()
            && m["content"].as_str().unwrap().contains("Crème"))
    );
    // Paging by next_before walks the same hits, newest first, none twice.
    let mut paged: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = format!(
            "/v1/search?q=creme%20brulee&limit=7{}",
            cursor
                .as_ref()
                .map(|c| format!("&before={c}"))
                .unwrap_or_default()
        );
        let page = query
            .call(Method::GET, &path, Some(&insider.access_token), None)
            .await?;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        paged.extend(
            page.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["message_id"].as_str().unwrap().to_string()),
        );
        match page.body["next_before"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        assert!(paged.len() <= hits.len(), "paging did not end");
    }
    let all: Vec<String> = hits
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paged, all);
    let cjk = search(insider, "東京").await?;
    assert!(!cjk.body["messages"].as_array().unwrap().is_empty());
    assert!(
        cjk.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["content"].as_str().unwrap().contains("東京"))
    );
    let cafe = search(insider, "cafe").await?;
    assert!(
        cafe.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["content"].as_str().unwrap().contains("CAFÉ"))
    );

    // An outsider never sees the private room: not in search, 404 on every read.
    let outsider = commands.user("outsider").await?;
    assert_eq!(
        commands.join(&outsider, &public.id).await?.status,
        StatusCode::OK
    );
    // Other tests' traffic may sit in front of it in the projector: wait long, fail only if stuck.
    wait_for("the join projected", Duration::from_secs(300), || async {
        let joined = get(&query, &outsider, "/v1/rooms?scope=joined")
            .await
            .ok()?;
        (joined.body.as_array()?.len() == 1).then_some(())
    })
    .await?;
    let outside = search(&outsider, "creme brulee").await?;
    let outside_hits = outside.body["messages"].as_array().unwrap();
    assert!(
        !outside_hits.is_empty(),
        "the public room's messages are found"
    );
    assert!(
        outside_hits
            .iter()
            .all(|m| m["room_id"] == public.id.as_str())
    );
    for path in [
        format!("/v1/rooms/{}", private.id),
        format!("/v1/rooms/{}/messages", private.id),
        format!("/v1/rooms/{}/members", private.id),
        format!("/v1/rooms/{}/presence", private.id),
        format!("/v1/search?q=creme&room_id={}", private.id),
    ] {
        let answer = get(&query, &outsider, &path).await?;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::NOT_FOUND, "room_not_found"),
            "{path}"
        );
    }
    let joined = get(&query, &outsider, "/v1/rooms?scope=joined").await?;
    let joined_ids: Vec<&str> = joined
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap())
        .collect();
    assert_eq!(joined_ids, [public.id.as_str()]);
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
