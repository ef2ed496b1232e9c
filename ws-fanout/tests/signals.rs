//! The ephemeral side of the socket and the long-polling fallback: presence seen by co-members
//! (and written to `chat.presence-events`, including when a node dies), typing seen and
//! expiring, and long polls that deliver exactly the sequence a socket sees.

mod common;

use std::time::Duration;

use common::{Client, Node, private_prefix};
use serde_json::{Value, json};
use test_support::{Api, User, env, wait_for};

const T: Duration = Duration::from_secs(120);

/// Waits for a frame of `kind` matching `pred`, skipping everything else.
async fn until_match(
    client: &mut Client,
    kind: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    loop {
        let frame = client.until(kind, T).await?;
        if pred(&frame) {
            return Ok(frame);
        }
    }
}

async fn subscribed(url: &str, user: &User, room: &str) -> anyhow::Result<Client> {
    let mut client = Client::connect(url, Some(&user.access_token)).await?;
    client
        .send(json!({"type": "subscribe", "room_id": room, "ref": "s"}))
        .await?;
    client.until("subscribed", T).await?;
    Ok(client)
}

/// The presence transitions of `user` on the topic of the broker at `brokers`, in order.
async fn presence_log(brokers: &str, user: &str) -> anyhow::Result<Vec<String>> {
    let events = test_support::log::read_key(
        brokers,
        &env::registry_url(),
        schemas::topics::PRESENCE_EVENTS,
        user,
    )
    .await?;
    Ok(events
        .iter()
        .filter_map(|e| match e {
            schemas::DomainEvent::PresenceChanged(p) => {
                Some(format!("{:?}", p.status).to_lowercase())
            }
            _ => None,
        })
        .collect())
}

#[tokio::test]
async fn presence_reaches_co_members_and_the_log_also_when_a_node_dies() -> anyhow::Result<()> {
    let ttl = [("CHAT_WS_PRESENCE_TTL_SECS", "3")];
    let node = Node::start(&ttl).await?;
    let commands = Api::new(env::commands_url());
    let watcher = commands.user("wspres").await?;
    let room = commands.create_room(&watcher, "public").await?;
    let friend = commands.user("wspres").await?;
    commands.join(&friend, &room).await?;
    let mut watching = Client::connect(&node.ws_url, Some(&watcher.access_token)).await?;
    watching
        .send(json!({"type": "subscribe", "room_id": room, "since_seq": 0}))
        .await?;
    // Presence goes to the co-members the node knows of (from the log, or the read model):
    // wait until it has seen the friend join, as it would have for anyone not joining this
    // very second.
    until_match(&mut watching, "event", |f| {
        f["event"]["kind"] == "member_joined"
    })
    .await?;

    // The friend connects: online for the watcher; closes: offline.
    let friend_socket = Client::connect(&node.ws_url, Some(&friend.access_token)).await?;
    let online = until_match(&mut watching, "presence", |f| {
        f["user_id"] == friend.user_id
    })
    .await?;
    assert_eq!(online["status"], "online");
    drop(friend_socket);
    let offline = until_match(&mut watching, "presence", |f| {
        f["user_id"] == friend.user_id
    })
    .await?;
    assert_eq!(offline["status"], "offline");

    // A second node dies with the friend connected: the connection lapses after the TTL and
    // the first node's sweep declares the friend offline.
    let mut doomed = Node::start(&ttl).await?;
    let _kept = Client::connect(&doomed.ws_url, Some(&friend.access_token)).await?;
    let online = until_match(&mut watching, "presence", |f| {
        f["user_id"] == friend.user_id
    })
    .await?;
    assert_eq!(online["status"], "online");
    doomed.service.kill9()?;
    let offline = until_match(&mut watching, "presence", |f| {
        f["user_id"] == friend.user_id
    })
    .await?;
    assert_eq!(offline["status"], "offline");

    // The transitions are on the topic, in order, and the read model follows. (Other nodes of
    // the suite on this Redis prefix may have swept the friend; they write to this broker.)
    let log = wait_for("the fourth transition on the topic", T, || async {
        let log = presence_log(&env::kafka_brokers(), &friend.user_id)
            .await
            .ok()?;
        (log.len() >= 4).then_some(log)
    })
    .await?;
    assert_eq!(log, ["online", "offline", "online", "offline"]);
    let query = Api::new(env::query_url());
    let _kept = Client::connect(&node.ws_url, Some(&friend.access_token)).await?;
    wait_for("the read model to show the friend online", T, || async {
        let answer = query
            .call(
                reqwest::Method::GET,
                &format!("/v1/rooms/{room}/presence"),
                Some(&watcher.access_token),
                None,
            )
            .await
            .ok()?;
        answer.body["online"]
            .as_array()?
            .iter()
            .any(|u| u == friend.user_id.as_str())
            .then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn typing_is_seen_by_the_room_and_expires() -> anyhow::Result<()> {
    let node = Node::start(&[]).await?;
    let commands = Api::new(env::commands_url());
    let reader = commands.user("wstype").await?;
    let room = commands.create_room(&reader, "public").await?;
    let typist = commands.user("wstype").await?;
    commands.join(&typist, &room).await?;
    let visitor = commands.user("wstype").await?;
    let mut reading = subscribed(&node.ws_url, &reader, &room).await?;
    let mut typing = subscribed(&node.ws_url, &typist, &room).await?;

    typing
        .send(json!({"type": "typing", "room_id": room}))
        .await?;
    let shown = until_match(&mut reading, "typing", |f| f["user_id"] == typist.user_id).await?;
    assert_eq!(shown["room_id"], room.as_str());
    assert_eq!(shown["active"], true);
    assert!(shown["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0));
    // A burst within the interval is absorbed, not relayed and not refused.
    for _ in 0..5 {
        typing
            .send(json!({"type": "typing", "room_id": room}))
            .await?;
    }
    let ended = until_match(&mut reading, "typing", |f| f["user_id"] == typist.user_id).await?;
    assert_eq!(ended["active"], false, "{ended}");
    assert!(
        node.metric("ws_typing_total{outcome=\"absorbed\"}").await >= 5.0,
        "{}",
        node.state().await
    );
    assert_eq!(
        node.metric("ws_typing_total{outcome=\"relayed\"}").await,
        1.0
    );

    // Not subscribed, or subscribed to a public room without being a member: refused.
    let mut stranger = Client::connect(&node.ws_url, Some(&visitor.access_token)).await?;
    stranger
        .send(json!({"type": "typing", "room_id": room}))
        .await?;
    assert_eq!(stranger.until("error", T).await?["code"], "invalid_input");
    stranger
        .send(json!({"type": "subscribe", "room_id": room}))
        .await?;
    stranger.until("subscribed", T).await?;
    stranger
        .send(json!({"type": "typing", "room_id": room}))
        .await?;
    assert_eq!(stranger.until("error", T).await?["code"], "forbidden");
    Ok(())
}

async fn poll(
    http: &reqwest::Client,
    node: &Node,
    token: Option<&str>,
    query: &str,
) -> anyhow::Result<(u16, Value)> {
    let mut request = http.get(format!("{}/v1/poll?{query}", node.http_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or_default()))
}

#[tokio::test]
async fn long_polling_delivers_the_same_sequence_as_the_socket() -> anyhow::Result<()> {
    let node = Node::start(&[("CHAT_WS_ROOM_BUFFER", "5000")]).await?;
    let commands = Api::new(env::commands_url());
    let owner = commands.user("wspoll").await?;
    let room = commands.create_room(&owner, "public").await?;
    let http = reqwest::Client::new();

    // Bad polls: clear errors.
    let token = owner.access_token.as_str();
    let (status, body) = poll(&http, &node, None, &format!("room_id={room}&since_seq=0")).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("missing_token"))
    );
    for bad in [
        format!("room_id={room}"),
        format!("room_id={room}&since_seq=-1"),
        format!("room_id={room}&since_seq=0&wait_ms=999999"),
        "room_id=nope&since_seq=0".to_string(),
        format!("room_id={room}&since_seq=999999&wait_ms=0"),
    ] {
        let (status, body) = poll(&http, &node, Some(token), &bad).await?;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_input", "{bad}: {body}");
    }
    // Nothing new: an empty answer after the wait.
    let (status, body) = poll(
        &http,
        &node,
        Some(token),
        &format!("room_id={room}&since_seq=1&wait_ms=300"),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["next_since_seq"], 1);

    // A socket and a poller follow the room while 300 messages are posted.
    let mut socket = Client::connect(&node.ws_url, Some(token)).await?;
    socket
        .send(json!({"type": "subscribe", "room_id": room, "since_seq": 0}))
        .await?;
    socket.until("subscribed", T).await?;
    let final_seq = 1 + 300;
    let poller = {
        let (http, url, room, token) = (
            http.clone(),
            node.http_url.clone(),
            room.clone(),
            owner.access_token.clone(),
        );
        tokio::spawn(async move {
            let mut seen: Vec<(i64, String)> = Vec::new();
            let mut since = 0i64;
            while since < final_seq {
                let response = http
                    .get(format!(
                        "{url}/v1/poll?room_id={room}&since_seq={since}&wait_ms=5000"
                    ))
                    .bearer_auth(&token)
                    .send()
                    .await?;
                // A client polling as fast as events come may spend its poll budget: it waits
                // as told and asks again from where it is (nothing is lost meanwhile).
                if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    let wait = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(1);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    continue;
                }
                anyhow::ensure!(
                    response.status().is_success(),
                    "poll: {}",
                    response.status()
                );
                let body: Value = response.json().await?;
                anyhow::ensure!(body.get("resync").is_none(), "resync: {body}");
                for e in body["events"].as_array().into_iter().flatten() {
                    let seq = e["seq"].as_i64().unwrap_or(-1);
                    anyhow::ensure!(seq == since + 1, "after {since} the poll gave {seq}");
                    since = seq;
                    seen.push((seq, e["event"]["envelope"]["event_id"].to_string()));
                }
                anyhow::ensure!(body["next_since_seq"] == since, "{body}");
            }
            anyhow::Ok(seen)
        })
    };
    for i in 0..300 {
        commands
            .post_until_accepted(&owner, &room, &format!("p-{i}"), &format!("poll {i}"), T)
            .await?;
    }
    let mut from_socket = Vec::new();
    while from_socket.len() < final_seq as usize {
        let e = socket.until("event", T).await?;
        from_socket.push((
            e["seq"].as_i64().unwrap_or(-1),
            e["event"]["envelope"]["event_id"].to_string(),
        ));
    }
    let from_poll = poller.await??;
    assert_eq!(from_poll.len(), final_seq as usize);
    assert_eq!(from_poll, from_socket);
    Ok(())
}

/// The broker is down (killed, restarted 9 s later) while users come and go: presence keeps
/// working on Redis (a connected user is never swept offline for want of refreshes, here for
/// three times the connection lifetime), and once the broker is back every transition is on
/// the topic, in order, none lost.
#[tokio::test]
async fn presence_holds_and_loses_nothing_while_the_broker_is_away() -> anyhow::Result<()> {
    let port = test_support::free_port();
    let stack = test_support::PrivateStack::new(&[("CHAT_KAFKA_PORT", port.to_string())])?;
    let started = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1} s: {what}", started.elapsed().as_secs_f64());
    stack.up(&["broker"])?;
    phase("private broker up");
    let brokers = format!("127.0.0.1:{port}");
    let prefix = private_prefix("wsaway").await?;
    // Bounded below nextest's backstop so that a node that never gets ready says why.
    let node = Node::start_within(
        &[
            ("CHAT_WS_PRESENCE_TTL_SECS", "3"),
            ("CHAT_KAFKA_BROKERS", brokers.as_str()),
            ("CHAT_REDIS_PREFIX", prefix.as_str()),
        ],
        Duration::from_secs(90),
    )
    .await?;
    phase("node ready");
    let commands = Api::new(env::commands_url());
    let stayer = commands.user("wsaway").await?;
    let flapper = commands.user("wsaway").await?;
    let _stays = Client::connect(&node.ws_url, Some(&stayer.access_token)).await?;
    let mut redis = platform::cache::connect(&env::redis_url()).await?;
    let live = |user: String| {
        let mut redis = redis.clone();
        let key = format!("{prefix}ws:conns:{user}");
        async move {
            let now = schemas::envelope::now_ms();
            let conns: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(key)
                .arg(now)
                .arg("+inf")
                .query_async(&mut redis)
                .await?;
            anyhow::Ok(conns.len())
        }
    };
    wait_for("the stayer online", T, || async {
        (live(stayer.user_id.clone()).await.ok()? == 1).then_some(())
    })
    .await?;

    // On the topic too before the broker goes: an event the broker took but had not
    // acknowledged when killed is sent again, and is then on the topic twice (at least once,
    // as the design says); the outage below is about what happens while it is away.
    wait_for("the stayer's online on the topic", T, || async {
        let log = presence_log(&brokers, &stayer.user_id).await.ok()?;
        (log == ["online"]).then_some(())
    })
    .await?;
    phase("stayer online");
    stack.kill9("broker-1")?;
    let outcome = async {
        // Comings and goings while the broker is away queue their events.
        for _ in 0..2 {
            let socket = Client::connect(&node.ws_url, Some(&flapper.access_token)).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(socket);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for second in 0..9 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            anyhow::ensure!(
                live(stayer.user_id.clone()).await? == 1,
                "the stayer lapsed {second} s into the broker's absence"
            );
        }
        anyhow::Ok(())
    }
    .await;
    phase("outage over");
    stack.up(&["broker"])?;
    phase("broker restarted");
    outcome?;
    let _: () = redis::cmd("PING").query_async(&mut redis).await?;

    let read = |user: String| {
        let brokers = brokers.clone();
        async move { presence_log(&brokers, &user).await.ok() }
    };
    let flapped = wait_for("the queued transitions on the topic", T, || async {
        let log = read(flapper.user_id.clone()).await?;
        (log.len() >= 4).then_some(log)
    })
    .await?;
    phase("transitions read back");
    assert_eq!(flapped, ["online", "offline", "online", "offline"]);
    assert_eq!(
        read(stayer.user_id.clone()).await.unwrap_or_default(),
        ["online"]
    );
    Ok(())
}

/// A node that swept a lapsed user offline dies before the broker took the event (here the
/// broker is away): its claim on the user lapses and a node started later sweeps the user
/// again, so the "offline" reaches the topic anyway. (The sweep used to remove the user from
/// the index outright, and such an "offline" was lost for good, the user shown online.)
#[tokio::test]
async fn a_sweep_lost_with_its_node_is_taken_again() -> anyhow::Result<()> {
    let port = test_support::free_port();
    let stack = test_support::PrivateStack::new(&[("CHAT_KAFKA_PORT", port.to_string())])?;
    stack.up(&["broker"])?;
    let brokers = format!("127.0.0.1:{port}");
    let prefix = private_prefix("wsclaim").await?;
    let settings = [
        ("CHAT_WS_PRESENCE_TTL_SECS", "2"),
        ("CHAT_KAFKA_BROKERS", brokers.as_str()),
        ("CHAT_REDIS_PREFIX", prefix.as_str()),
    ];
    let within = Duration::from_secs(90);
    let mut sweeper = Node::start_within(&settings, within).await?;
    let mut holder = Node::start_within(&settings, within).await?;
    let user = Api::new(env::commands_url()).user("wsclaim").await?;
    let read = || {
        let (brokers, user) = (brokers.clone(), user.user_id.clone());
        async move { presence_log(&brokers, &user).await.ok() }
    };
    let _socket = Client::connect(&holder.ws_url, Some(&user.access_token)).await?;
    wait_for("online on the topic", T, || async {
        let log = read().await?;
        (!log.is_empty()).then_some(log)
    })
    .await?;

    // The broker goes away, the holder dies: the sweeper claims the lapsed user, and its
    // "offline" waits for the broker. Then the sweeper dies too.
    stack.kill9("broker-1")?;
    holder.service.kill9()?;
    let mut redis = platform::cache::connect(&env::redis_url()).await?;
    let deadlines = format!("{prefix}ws:presence:deadlines");
    wait_for("the sweeper's claim", T, || {
        let mut redis = redis.clone();
        let (deadlines, user) = (deadlines.clone(), user.user_id.clone());
        async move {
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg(deadlines)
                .arg(user)
                .query_async(&mut redis)
                .await
                .ok()?;
            // A claim ends 30 s ahead; a connection's expiry is at most 2 s ahead.
            (score? > (schemas::envelope::now_ms() + 10_000) as f64).then_some(())
        }
    })
    .await?;
    sweeper.service.kill9()?;

    stack.up(&["broker"])?;
    let _later = Node::start_within(&settings, within).await?;
    let log = wait_for("offline on the topic", T, || async {
        let log = read().await?;
        (log.len() >= 2).then_some(log)
    })
    .await?;
    assert_eq!(log, ["online", "offline"]);
    // The claim ended with the write: the user left the index.
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(&deadlines)
        .arg(&user.user_id)
        .query_async(&mut redis)
        .await?;
    assert_eq!(score, None);
    Ok(())
}
