//! Interest routing over three real nodes: each node reads only the partitions of the rooms its
//! sockets follow and receives only those rooms' fast copies; a node without sockets reads
//! nothing; a node lets go of a room after its last socket left (and the linger), and when a
//! reader comes back it reads the partition again and the reader's stream resumes without a gap.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Client, Node};
use serde_json::json;
use test_support::{Api, User, env};

const POSTS: usize = 15;
const LINGER_SECS: u64 = 2;

/// The rooms of the test, by the partition they live in: `a1` and `a2` share one partition, `b`
/// and `x` have one each, all four different.
struct Rooms {
    a1: String,
    a2: String,
    b: String,
    x: String,
}

async fn rooms(api: &Api, owner: &User, partitions: i32) -> anyhow::Result<Rooms> {
    let mut by_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for _ in 0..60 {
        let room = api.create_room(owner, "public").await?;
        by_partition
            .entry(schemas::partition::partition_for(&room, partitions))
            .or_default()
            .push(room);
        let Some((pa, pair)) = by_partition.iter().find(|(_, r)| r.len() >= 2) else {
            continue;
        };
        let others: Vec<&String> = by_partition
            .iter()
            .filter(|(p, _)| *p != pa)
            .map(|(_, r)| &r[0])
            .collect();
        if others.len() >= 2 {
            return Ok(Rooms {
                a1: pair[0].clone(),
                a2: pair[1].clone(),
                b: others[0].clone(),
                x: others[1].clone(),
            });
        }
    }
    anyhow::bail!("60 rooms did not spread over three partitions")
}

/// Subscribes after `since` and reads events until `until`, each exactly the next seq.
async fn read(client: &mut Client, room: &str, since: i64, until: i64) -> anyhow::Result<Vec<i64>> {
    // A node may answer `unavailable` while it catches up; clients try again.
    for attempt in 1.. {
        client
            .send(json!({"type": "subscribe", "room_id": room, "since_seq": since}))
            .await?;
        let frame = loop {
            let frame = client.json(Duration::from_secs(60)).await?;
            if frame["type"] == "subscribed" || frame["type"] == "error" {
                break frame;
            }
        };
        if frame["type"] == "subscribed" {
            break;
        }
        anyhow::ensure!(frame["code"] == "unavailable" && attempt < 10, "{frame}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    follow(client, room, since, until).await
}

async fn follow(
    client: &mut Client,
    room: &str,
    mut last: i64,
    until: i64,
) -> anyhow::Result<Vec<i64>> {
    let mut seqs = Vec::new();
    while last < until {
        let frame = client.json(Duration::from_secs(60)).await?;
        match frame["type"].as_str() {
            Some("event") => {
                anyhow::ensure!(frame["room_id"] == room, "{frame}");
                let seq = frame["seq"].as_i64().unwrap_or(-1);
                anyhow::ensure!(seq == last + 1, "after seq {last} got {frame}");
                last = seq;
                seqs.push(seq);
            }
            Some("resync") | Some("error") => anyhow::bail!("{frame}"),
            _ => {}
        }
    }
    Ok(seqs)
}

/// Posts `n` messages to `room`; returns the last seq.
async fn post(api: &Api, owner: &User, room: &str, tag: &str, n: usize) -> anyhow::Result<i64> {
    let mut seq = 0;
    for i in 0..n {
        let body = api
            .post_until_accepted(
                owner,
                room,
                &format!("{tag}-{i}"),
                &format!("{tag} {i}"),
                Duration::from_secs(120),
            )
            .await?;
        seq = body["seq"].as_i64().unwrap_or_default();
    }
    Ok(seq)
}

/// The partitions a node's tail has read records from (`ws_log_records_total{partition}`).
async fn partitions_read(node: &Node) -> anyhow::Result<BTreeSet<i32>> {
    let text = reqwest::get(format!("{}/metrics", node.http_url))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("ws_log_records_total{partition=\""))
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect())
}

#[tokio::test]
async fn each_node_reads_only_its_own_rooms_and_lets_go_of_them_when_their_readers_leave()
-> anyhow::Result<()> {
    let api = Api::new(env::commands_url()).patient();
    let partitions = ws_fanout::tail::partition_count(&env::kafka_brokers()).await?;
    let owner = api.user("interest").await?;
    let rooms = rooms(&api, &owner, partitions).await?;
    let pa = schemas::partition::partition_for(&rooms.a1, partitions);
    let pb = schemas::partition::partition_for(&rooms.b, partitions);
    let linger = LINGER_SECS.to_string();
    // Warm reading of 20,000 records: the resume below must find its gap on the re-read
    // partition even while other tests fill the shared log.
    let vars = [
        ("CHAT_WS_INTEREST_LINGER_SECS", linger.as_str()),
        ("CHAT_WS_WARM_RECORDS", "20000"),
    ];
    let (a, b, c) = tokio::try_join!(Node::start(&vars), Node::start(&vars), Node::start(&vars))?;

    // A ready node with no sockets follows nothing.
    for node in [&a, &b, &c] {
        assert_eq!(node.metric("ws_interest_partitions").await, 0.0);
    }
    let mut on_a = Client::connect(&a.ws_url, Some(&owner.access_token)).await?;
    let mut on_b = Client::connect(&b.ws_url, Some(&owner.access_token)).await?;
    // Each reader starts from the room's beginning (the node places it from the log).
    let a_head = post(&api, &owner, &rooms.a1, "a1-before", 1).await?;
    let b_head = post(&api, &owner, &rooms.b, "b-before", 1).await?;
    read(&mut on_a, &rooms.a1, 0, a_head).await?;
    read(&mut on_b, &rooms.b, 0, b_head).await?;
    let a_until = a_head + POSTS as i64;
    let b_until = b_head + POSTS as i64;

    // Traffic in all four rooms; each reader sees its room's, in order.
    let (_, _, _, _, a_seqs, b_seqs) = tokio::try_join!(
        post(&api, &owner, &rooms.a1, "a1", POSTS),
        post(&api, &owner, &rooms.a2, "a2", POSTS),
        post(&api, &owner, &rooms.b, "b", POSTS),
        post(&api, &owner, &rooms.x, "x", POSTS),
        follow(&mut on_a, &rooms.a1, a_head, a_until),
        follow(&mut on_b, &rooms.b, b_head, b_until),
    )?;
    assert_eq!(a_seqs.len(), POSTS);
    assert_eq!(b_seqs.len(), POSTS);

    // Each node read the log of its room's partition only (a2 shares a1's), and took fast
    // copies of its own room only: a1's posts at most, none of a2's, b's or x's.
    assert_eq!(
        partitions_read(&a).await?,
        BTreeSet::from([pa]),
        "{}",
        a.state().await
    );
    assert_eq!(
        partitions_read(&b).await?,
        BTreeSet::from([pb]),
        "{}",
        b.state().await
    );
    assert!(partitions_read(&c).await?.is_empty(), "{}", c.state().await);
    assert_eq!(a.metric("ws_interest_partitions").await, 1.0);
    assert_eq!(a.metric("ws_interest_rooms").await, 1.0);
    assert_eq!(c.metric("ws_interest_partitions").await, 0.0);
    let fast_a = a.metric("ws_fast_records_total").await;
    let fast_b = b.metric("ws_fast_records_total").await;
    assert!(
        fast_a <= POSTS as f64,
        "node A took {fast_a} fast copies for {POSTS} posts of its room"
    );
    assert!(
        fast_b <= POSTS as f64,
        "node B took {fast_b} fast copies for {POSTS} posts of its room"
    );
    assert!(fast_a + fast_b > 0.0, "no fast copy reached either node");
    assert_eq!(c.metric("ws_fast_records_total").await, 0.0);

    // A's reader leaves; after the linger A lets go of the room and its partition.
    drop(on_a);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while a.metric("ws_interest_partitions").await != 0.0 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "node A still reads: {}",
            a.state().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.metric("ws_interest_rooms").await, 0.0);
    let log_a = a
        .metric(&format!("ws_log_records_total{{partition=\"{pa}\"}}"))
        .await;
    let fast_a = a.metric("ws_fast_records_total").await;
    // Posts while nobody on A listens reach A neither way.
    let gap_until = post(&api, &owner, &rooms.a1, "a1-away", POSTS).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        a.metric(&format!("ws_log_records_total{{partition=\"{pa}\"}}"))
            .await,
        log_a
    );
    assert_eq!(a.metric("ws_fast_records_total").await, fast_a);

    // The reader comes back after the last seq it saw: A reads the partition again and the
    // stream resumes with the posts it missed, then live ones, with no gap.
    let mut back = Client::connect(&a.ws_url, Some(&owner.access_token)).await?;
    let final_seq = gap_until + 3;
    let (resumed, _) = tokio::try_join!(
        read(&mut back, &rooms.a1, a_until, final_seq),
        post(&api, &owner, &rooms.a1, "a1-back", 3),
    )?;
    assert_eq!(resumed, ((a_until + 1)..=final_seq).collect::<Vec<_>>());
    assert_eq!(a.metric("ws_interest_partitions").await, 1.0);
    Ok(())
}
