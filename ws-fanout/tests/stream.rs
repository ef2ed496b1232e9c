//! Room streams over real sockets: 5,000 messages while readers drop and resume with
//! `since_seq`, and every reader ends with exactly the room's sequence.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Client, Incoming, Node};
use serde_json::{Value, json};
use test_support::{Api, User, env};
use tokio::sync::{Semaphore, watch};

/// Posts in flight at once over all authors: enough for a few hundred messages a second, not
/// so many that the local broker starves the write tier's group heartbeats.
const POSTS_IN_FLIGHT: usize = 6;

/// Reads the room until `final_seq`, dropping the socket now and then and resuming after the
/// last seq seen. Returns seq -> event_id, and fails on any gap, duplicate or resync.
async fn read_with_drops(
    url: String,
    token: String,
    room: String,
    seed: u64,
    mut final_seq: watch::Receiver<i64>,
) -> anyhow::Result<(BTreeMap<i64, String>, usize)> {
    let mut seen: BTreeMap<i64, String> = BTreeMap::new();
    let mut last = 0i64;
    let mut reconnects = 0usize;
    let mut rng = seed;
    let mut next_drop = || {
        // xorshift: a few dozen to a few hundred events between drops.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        30 + (rng % 300) as i64
    };
    loop {
        let mut client = Client::connect(&url, Some(&token)).await?;
        client
            .send(json!({"type": "subscribe", "room_id": room, "since_seq": last}))
            .await?;
        let ack = client.until("subscribed", Duration::from_secs(30)).await?;
        anyhow::ensure!(ack["room_id"] == room.as_str(), "{ack}");
        let drop_at = last + next_drop();
        loop {
            let target = *final_seq.borrow();
            if target > 0 && last >= target {
                return Ok((seen, reconnects));
            }
            if last >= drop_at {
                break;
            }
            // Long: events stop while the write tier is briefly unavailable (the local broker
            // can time out its group session under load); the posts retry meanwhile.
            let frame = match next_or_final(&mut client, &mut final_seq).await? {
                None => continue,
                Some(Incoming::Json(v)) => v,
                Some(Incoming::Closed(c)) => anyhow::bail!("closed by the node: {c:?}"),
            };
            match frame["type"].as_str() {
                Some("event") => record(&frame, &mut last, &mut seen)
                    .map_err(|e| e.context(format!("reconnects: {reconnects}")))?,
                Some("resync") => anyhow::bail!("unexpected resync: {frame}"),
                Some("error") => anyhow::bail!("error frame: {frame}"),
                _ => {}
            }
        }
        // Drop without a close handshake, like a lost connection, then come back.
        drop(client);
        reconnects += 1;
        tokio::time::sleep(Duration::from_millis(next_drop() as u64 % 150)).await;
    }
}

/// Takes an event frame that must be the one after `last`, and keeps its event id by seq.
fn record(frame: &Value, last: &mut i64, seen: &mut BTreeMap<i64, String>) -> anyhow::Result<()> {
    let seq = frame["seq"].as_i64().unwrap_or(-1);
    anyhow::ensure!(seq == *last + 1, "after seq {last} got seq {seq}");
    let id = frame["event"]["envelope"]["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    seen.insert(seq, id);
    *last = seq;
    Ok(())
}

/// The next frame, or `None` when the final seq became known meanwhile (the reader may hold
/// the last event already: the fast channel often beats the post's acknowledgement).
async fn next_or_final(
    client: &mut Client,
    final_seq: &mut watch::Receiver<i64>,
) -> anyhow::Result<Option<Incoming>> {
    tokio::select! {
        frame = client.next(Duration::from_secs(300)) => Ok(Some(frame?)),
        changed = final_seq.changed() => {
            changed?;
            Ok(None)
        }
    }
}

/// Joins, retrying while the write tier is unavailable (503 or unreachable) for up to 5 minutes.
async fn join(commands: &Api, user: &test_support::User, room: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        match commands.join(user, room).await {
            Ok(a) if a.status.is_success() => return Ok(()),
            Ok(a) if a.status != reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                anyhow::bail!("join: {} {}", a.status, a.body)
            }
            _ if std::time::Instant::now() >= deadline => anyhow::bail!("join never accepted"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// A public room with `readers` and `authors` (all members), created through the write API.
async fn busy_room(
    commands: &Api,
    prefix: &str,
    readers: usize,
    authors: usize,
) -> anyhow::Result<(String, Vec<User>, Vec<User>)> {
    let owner = commands.user(prefix).await?;
    let room = commands.create_room(&owner, "public").await?;
    let mut members = Vec::new();
    for _ in 0..readers + authors {
        let user = commands.user(prefix).await?;
        join(commands, &user, &room).await?;
        members.push(user);
    }
    let authors = members.split_off(readers);
    Ok((room, members, authors))
}

type Reading = tokio::task::JoinHandle<anyhow::Result<(BTreeMap<i64, String>, usize)>>;

/// One [`read_with_drops`] task per reader.
fn spawn_readers(
    node: &Node,
    readers: &[User],
    room: &str,
    seed: u64,
    final_seq: &watch::Receiver<i64>,
) -> Vec<Reading> {
    readers
        .iter()
        .enumerate()
        .map(|(i, reader)| {
            tokio::spawn(read_with_drops(
                node.ws_url.clone(),
                reader.access_token.clone(),
                room.to_string(),
                seed ^ (i as u64 + 1),
                final_seq.clone(),
            ))
        })
        .collect()
}

/// Every author posts `per_author` messages, concurrently (at most [`POSTS_IN_FLIGHT`] at
/// once); returns the highest seq acknowledged.
async fn post_all(
    commands: Api,
    room: &str,
    authors: Vec<User>,
    per_author: usize,
    tag: &str,
) -> anyhow::Result<i64> {
    let commands = Arc::new(commands);
    let gate = Arc::new(Semaphore::new(POSTS_IN_FLIGHT));
    let mut posting = Vec::new();
    for (a, author) in authors.into_iter().enumerate() {
        let commands = commands.clone();
        let room = room.to_string();
        let gate = gate.clone();
        let tag = tag.to_string();
        posting.push(tokio::spawn(async move {
            let mut max_seq = 0i64;
            for i in 0..per_author {
                let _turn = gate.acquire().await?;
                let body = commands
                    .post_until_accepted(
                        &author,
                        &room,
                        &format!("{tag}-{a}-{i}"),
                        &format!("{tag} message {i} from author {a}"),
                        Duration::from_secs(300),
                    )
                    .await?;
                max_seq = max_seq.max(body["seq"].as_i64().unwrap_or(0));
            }
            anyhow::Ok(max_seq)
        }));
    }
    let mut final_seq = 0;
    for p in posting {
        final_seq = final_seq.max(p.await??);
    }
    Ok(final_seq)
}

/// Waits for the readers: each saw exactly seq 1..=`final_seq`, all the same events. Returns
/// the reconnects over all readers.
async fn same_full_sequence(reading: Vec<Reading>, final_seq: i64) -> anyhow::Result<usize> {
    let mut reference: Option<BTreeMap<i64, String>> = None;
    let mut total_reconnects = 0;
    for r in reading {
        let (seen, reconnects) = r.await??;
        total_reconnects += reconnects;
        assert_eq!(seen.len() as i64, final_seq);
        assert_eq!(seen.keys().next(), Some(&1));
        assert_eq!(seen.keys().last(), Some(&final_seq));
        match &reference {
            None => reference = Some(seen),
            Some(r) => assert_eq!(r, &seen, "readers saw different events"),
        }
    }
    Ok(total_reconnects)
}

#[tokio::test]
async fn readers_that_drop_and_resume_see_exactly_the_room_sequence() -> anyhow::Result<()> {
    let node = Node::start(&[("CHAT_WS_ROOM_BUFFER", "20000")]).await?;
    let commands = Api::new(env::commands_url());
    let (room, readers, authors) = busy_room(&commands, "wsread", 4, 50).await?;
    let (final_tx, final_rx) = watch::channel(0i64);
    let reading = spawn_readers(&node, &readers, &room, 0x9e3779b97f4a7c15, &final_rx);

    // 50 authors x 100 messages, concurrently.
    let final_seq = post_all(commands, &room, authors, 100, "ws").await?;
    // 1 creation + 54 joins + 5,000 posts.
    assert_eq!(final_seq, 5055);
    final_tx.send(final_seq)?;

    let total_reconnects = same_full_sequence(reading, final_seq).await?;
    assert!(total_reconnects >= 20, "only {total_reconnects} reconnects");
    assert_eq!(node.metric("ws_log_gaps_total").await, 0.0);
    Ok(())
}

/// Durable-then-notify: the fast channel (Redis pub/sub) is cut again and again mid-stream, and
/// the log repairs every loss: readers still end with exactly the room's sequence.
#[tokio::test]
async fn the_log_repairs_every_loss_of_the_fast_channel() -> anyhow::Result<()> {
    let node = Node::start(&[("CHAT_WS_ROOM_BUFFER", "20000")]).await?;
    let commands = Api::new(env::commands_url());
    let (room, readers, authors) = busy_room(&commands, "wsfast", 2, 20).await?;
    let (final_tx, final_rx) = watch::channel(0i64);
    let reading = spawn_readers(&node, &readers, &room, 0x2545f4914f6cdd1d, &final_rx);

    // Cut every pub/sub connection of the Redis server every 150 ms while the authors post.
    let cutting = tokio_util::sync::CancellationToken::new();
    let cutter = {
        let cutting = cutting.clone();
        tokio::spawn(async move {
            let mut redis = platform::cache::connect(&env::redis_url()).await?;
            let mut cuts = 0u32;
            while !cutting.is_cancelled() {
                let _: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut redis)
                    .await?;
                cuts += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            anyhow::Ok(cuts)
        })
    };
    let final_seq = post_all(commands, &room, authors, 50, "fast").await?;
    cutting.cancel();
    let cuts = cutter.await??;
    assert_eq!(final_seq, 1 + 22 + 1000);
    final_tx.send(final_seq)?;
    same_full_sequence(reading, final_seq).await?;
    let fast = node
        .metric("ws_events_released_total{origin=\"fast\"}")
        .await;
    let log = node
        .metric("ws_events_released_total{origin=\"log\"}")
        .await;
    let resubscribed = node.metric("ws_fast_reconnects_total").await;
    assert!(cuts >= 5, "only {cuts} cuts");
    assert!(
        resubscribed >= 3.0,
        "fast channel resubscribed {resubscribed} times"
    );
    assert!(fast > 0.0, "nothing came first through the fast channel");
    assert!(log > 0.0, "the log repaired nothing ({fast} fast)");
    Ok(())
}

/// Two nodes, readers split across them: every reader, whichever node it is on, ends with the
/// same exact sequence (each node tails every partition itself).
#[tokio::test]
async fn readers_on_two_nodes_see_the_same_sequence() -> anyhow::Result<()> {
    let first = Node::start(&[("CHAT_WS_ROOM_BUFFER", "20000")]).await?;
    let second = Node::start(&[("CHAT_WS_ROOM_BUFFER", "20000")]).await?;
    let commands = Api::new(env::commands_url());
    let (room, readers, authors) = busy_room(&commands, "wstwo", 4, 20).await?;
    let (final_tx, final_rx) = watch::channel(0i64);
    let mut reading = spawn_readers(&first, &readers[..2], &room, 0x51ed27a1, &final_rx);
    reading.extend(spawn_readers(
        &second,
        &readers[2..],
        &room,
        0x7c3b9f05,
        &final_rx,
    ));

    let final_seq = post_all(commands, &room, authors, 50, "two").await?;
    assert_eq!(final_seq, 1 + 24 + 1000);
    final_tx.send(final_seq)?;
    same_full_sequence(reading, final_seq).await?;
    for node in [&first, &second] {
        assert_eq!(node.metric("ws_log_gaps_total").await, 0.0);
    }
    Ok(())
}

/// Reads the room on `first` until that node stops, then resumes on `second` after the last seq
/// seen. Returns seq -> event_id and the close code `first` ended the socket with.
async fn read_across_a_stop(
    first: String,
    second: String,
    token: String,
    room: String,
    mut final_seq: watch::Receiver<i64>,
) -> anyhow::Result<(BTreeMap<i64, String>, Option<(u16, String)>)> {
    let mut seen = BTreeMap::new();
    let mut last = 0i64;
    let mut closed = None;
    let mut url = first;
    loop {
        let mut client = Client::connect(&url, Some(&token)).await?;
        client
            .send(json!({"type": "subscribe", "room_id": room, "since_seq": last}))
            .await?;
        client.until("subscribed", Duration::from_secs(60)).await?;
        loop {
            let target = *final_seq.borrow();
            if target > 0 && last >= target {
                return Ok((seen, closed));
            }
            match next_or_final(&mut client, &mut final_seq).await? {
                None => {}
                Some(Incoming::Json(frame)) => match frame["type"].as_str() {
                    Some("event") => record(&frame, &mut last, &mut seen)?,
                    Some("resync") | Some("error") => anyhow::bail!("unexpected {frame}"),
                    _ => {}
                },
                Some(Incoming::Closed(c)) => {
                    anyhow::ensure!(closed.is_none(), "the second node closed too: {c:?}");
                    closed = Some(c.unwrap_or((0, String::new())));
                    url = second.clone();
                    break;
                }
            }
        }
    }
}

/// SIGTERM mid-stream: every socket of the stopping node gets close 1001 with a reconnect hint,
/// and its readers, resuming on another node after the last seq they saw, still end with
/// exactly the room's sequence: nothing acknowledged is lost by a node going away.
#[tokio::test]
async fn a_node_stopping_mid_stream_loses_nothing_for_its_readers() -> anyhow::Result<()> {
    let mut stopping = Node::start(&[("CHAT_WS_ROOM_BUFFER", "20000")]).await?;
    let staying = Node::start(&[("CHAT_WS_ROOM_BUFFER", "20000")]).await?;
    let commands = Api::new(env::commands_url());
    let (room, readers, authors) = busy_room(&commands, "wsterm", 3, 10).await?;
    let (final_tx, final_rx) = watch::channel(0i64);
    let reading: Vec<_> = readers
        .iter()
        .map(|reader| {
            tokio::spawn(read_across_a_stop(
                stopping.ws_url.clone(),
                staying.ws_url.clone(),
                reader.access_token.clone(),
                room.clone(),
                final_rx.clone(),
            ))
        })
        .collect();
    let posting = {
        let room = room.clone();
        tokio::spawn(async move { post_all(commands, &room, authors, 60, "term").await })
    };
    test_support::wait_for(
        "the readers to be mid-stream",
        Duration::from_secs(300),
        || async { (stopping.metric("ws_frames_out_total").await >= 150.0).then_some(()) },
    )
    .await?;
    stopping.service.terminate()?;

    let final_seq = posting.await??;
    assert_eq!(final_seq, 1 + 13 + 600);
    final_tx.send(final_seq)?;
    let mut reference = None;
    for r in reading {
        let (seen, closed) = r.await??;
        let (code, reason) = closed.expect("the stopping node closed every socket");
        assert_eq!(code, 1001, "{reason}");
        assert!(reason.contains("since_seq"), "no reconnect hint: {reason}");
        assert_eq!(seen.len() as i64, final_seq);
        match &reference {
            None => reference = Some(seen),
            Some(r) => assert_eq!(r, &seen, "readers saw different events"),
        }
    }
    Ok(())
}
