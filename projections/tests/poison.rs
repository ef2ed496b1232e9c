//! Records a projector cannot apply: bytes that do not decode, an event that skips ahead of
//! its room (a second writer or a gap), and an exact duplicate. The first two land in
//! `chat.dead-letter` with where they came from and why, the duplicate is skipped, and every
//! projector keeps going: the events after them are applied and each store equals the model.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::ReadSide;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::topics::{DEAD_LETTER, Topic};
use test_support::scenario;

/// One dead letter: its headers by name, and its payload.
struct Letter {
    headers: BTreeMap<String, String>,
    payload: Vec<u8>,
}

fn dead_letters(brokers: &str, expected: usize) -> anyhow::Result<Vec<Letter>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "poison-test")
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(10);
    let partitions = schemas::kafka::partition_count(&consumer, DEAD_LETTER, timeout)?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(DEAD_LETTER, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut letters = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while letters.len() < expected && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let mut headers = BTreeMap::new();
        if let Some(h) = message.headers() {
            for header in h.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                headers.insert(header.key.to_string(), value);
            }
        }
        letters.push(Letter {
            headers,
            payload: message.payload().unwrap_or_default().to_vec(),
        });
    }
    Ok(letters)
}

#[tokio::test]
async fn poison_records_are_dead_lettered_and_projectors_continue() -> anyhow::Result<()> {
    let side = ReadSide::new()?;
    let s = scenario::chat(3, 3, 30, schemas::envelope::now_ms());
    let writer = side.writer().await?;
    let (first, rest) = s.events.split_at(s.events.len() / 2);
    writer.write(first).await?;

    let room = s.rooms[0].clone();
    let poison = b"\x00\x00\x00\x00\x07 definitely not avro";
    writer
        .write_raw(Topic::RoomEvents.name(), &room, poison)
        .await?;
    // An exact duplicate of the room's last written event: skipped, not a conflict.
    let last_of_room = first
        .iter()
        .rev()
        .find(|e| e.envelope().room_id.as_deref() == Some(room.as_str()))
        .cloned();
    let last_of_room =
        last_of_room.ok_or_else(|| anyhow::anyhow!("room 0 has no event in the first half"))?;
    // A different event claiming a seq far ahead: a conflict.
    let mut ahead = last_of_room.clone();
    ahead.envelope_mut().event_id = schemas::envelope::new_event_id();
    ahead.envelope_mut().seq = ahead.envelope().seq.map(|s| s + 100);
    writer.write(&[last_of_room.clone(), ahead.clone()]).await?;
    writer.write(rest).await?;

    let topics = [Topic::RoomEvents, Topic::UserEvents, Topic::PresenceEvents];
    let projectors = ["mongo", "redis", "clickhouse"];
    let p = side.start(&projectors.join(","), 50)?;
    for projector in projectors {
        let own = projections::topics_of(projector).unwrap_or_default();
        p.caught_up(&side, projector, &own).await?;
    }

    // Each projector reading room events dead-letters the poison and the conflict, once.
    let letters = dead_letters(&side.brokers, projectors.len() * 2)?;
    assert_eq!(
        letters.len(),
        projectors.len() * 2,
        "dead letters: {:?}",
        letters.iter().map(|l| &l.headers).collect::<Vec<_>>()
    );
    let ends = side.ends(&[Topic::RoomEvents])?;
    for projector in projectors {
        let group = format!("{}{projector}", side.group_prefix);
        let mine: Vec<&Letter> = letters
            .iter()
            .filter(|l| l.headers.get("consumer") == Some(&group))
            .collect();
        assert_eq!(
            mine.len(),
            2,
            "{projector}: {:?}",
            mine.iter().map(|l| &l.headers).collect::<Vec<_>>()
        );
        let undecodable = mine
            .iter()
            .find(|l| l.headers["error"].starts_with("undecodable"))
            .expect("undecodable letter");
        assert_eq!(
            undecodable.payload, poison,
            "{projector}: the original bytes are kept"
        );
        assert_eq!(
            undecodable.headers["origin-topic"],
            Topic::RoomEvents.name()
        );
        let partition: i32 = undecodable.headers["origin-partition"].parse()?;
        let offset: i64 = undecodable.headers["origin-offset"].parse()?;
        assert!(ends.contains_key(&(Topic::RoomEvents.name().to_string(), partition)));
        assert!(offset >= 0);
        let conflict = mine
            .iter()
            .find(|l| !l.headers["error"].starts_with("undecodable"))
            .expect("conflict letter");
        assert_eq!(
            conflict.headers["origin-partition"],
            undecodable.headers["origin-partition"]
        );
        let conflict_offset: i64 = conflict.headers["origin-offset"].parse()?;
        assert_eq!(
            conflict_offset,
            offset + 2,
            "{projector}: poison, duplicate, then the conflict"
        );

        let metric = |outcome: &str| {
            format!("projection_events_total{{outcome=\"{outcome}\",projector=\"{projector}\"}}")
        };
        assert_eq!(p.metric(&metric("undecodable")).await, 1.0, "{projector}");
        assert_eq!(p.metric(&metric("conflict")).await, 1.0, "{projector}");
        assert!(p.metric(&metric("duplicate")).await >= 1.0, "{projector}");
    }

    // And everything after the bad records was applied.
    let model = side.model(&topics).await?;
    assert_eq!(model.conflicts, 1);
    let diffs = projections::verify::verify_mongo(&side.mongo().await?, &model).await?;
    assert!(diffs.is_empty(), "mongo: {diffs:?}");
    let redis = platform::cache::connect(&test_support::env::redis_url()).await?;
    let diffs = projections::verify::verify_redis(&redis, &side.redis_prefix, &model).await?;
    assert!(diffs.is_empty(), "redis: {diffs:?}");
    let client = projections::analytics::client(&test_support::env::clickhouse_url());
    let diffs =
        projections::verify::verify_clickhouse(&client, &side.clickhouse_db, &model).await?;
    assert!(diffs.is_empty(), "clickhouse: {diffs:?}");
    Ok(())
}

/// Forwards connections on `listener` to `to` (the real registry), byte for byte.
async fn forward(listener: tokio::net::TcpListener, to: String) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let to = to.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// A registry that does not answer is a dependency blinking, not bad records: projectors
/// started while their registry address refuses connections wait (retrying, counted in
/// `retries_total{what="registry"}`) instead of dead-lettering what they read, and once it
/// answers they apply everything, each store equal to the model.
#[tokio::test]
async fn an_unreachable_registry_is_waited_for_not_dead_lettered() -> anyhow::Result<()> {
    let side = ReadSide::new()?;
    let s = scenario::chat(3, 3, 20, schemas::envelope::now_ms());
    side.writer().await?.write(&s.events).await?;

    // The registry's address with another port, where nothing listens yet: every lookup is
    // refused.
    let registry = reqwest::Url::parse(&test_support::env::registry_url())?;
    let real = format!(
        "{}:{}",
        registry.host_str().unwrap_or("127.0.0.1"),
        registry.port_or_known_default().unwrap_or(80)
    );
    let port = test_support::free_port();
    let mut refused = registry.clone();
    refused
        .set_port(Some(port))
        .map_err(|()| anyhow::anyhow!("no port in the registry URL"))?;
    let projectors = ["mongo", "redis"];
    let p = side.start_with(
        &projectors.join(","),
        50,
        &[("CHAT_REGISTRY_URL", refused.to_string())],
    )?;
    test_support::wait_for(
        "the projectors to retry the registry",
        Duration::from_secs(60),
        || async { (p.metric("retries_total{what=\"registry\"}").await >= 4.0).then_some(()) },
    )
    .await?;
    let dead = || async {
        let mut dead = 0.0;
        for projector in projectors {
            dead += p
                .metric(&format!(
                    "projection_events_total{{outcome=\"undecodable\",projector=\"{projector}\"}}"
                ))
                .await;
        }
        dead
    };
    assert_eq!(
        dead().await,
        0.0,
        "records dead-lettered while the registry was away"
    );

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(forward(listener, real));
    for projector in projectors {
        let own = projections::topics_of(projector).unwrap_or_default();
        p.caught_up(&side, projector, &own).await?;
    }
    assert_eq!(dead().await, 0.0);
    let model = side
        .model(&[Topic::RoomEvents, Topic::UserEvents, Topic::PresenceEvents])
        .await?;
    let diffs = projections::verify::verify_mongo(&side.mongo().await?, &model).await?;
    assert!(diffs.is_empty(), "mongo: {diffs:?}");
    let redis = platform::cache::connect(&test_support::env::redis_url()).await?;
    let diffs = projections::verify::verify_redis(&redis, &side.redis_prefix, &model).await?;
    assert!(diffs.is_empty(), "redis: {diffs:?}");
    Ok(())
}
