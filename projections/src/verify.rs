//! Compares each store with the [`Model`] of the log and lists every difference.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::Database;
use mongodb::bson::{Document, doc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use redis::aio::ConnectionManager;
use schemas::topics::Topic;
use schemas::{DomainEvent, EventCodec};
use serde::Deserialize;

use crate::error::ProjectionError;
use crate::model::{MessageModel, Model};
use crate::source::Positions;
use read_model::history::{Start, Walk};
use read_model::{MEMBERSHIPS, MESSAGES, ROOMS};

/// Every decodable event of `topics` from offset 0 to the current end, partition by partition
/// (log order within each partition, which is all the model needs). `progress` is called with
/// the number of records read so far.
pub async fn read_log(
    brokers: &str,
    codec: &EventCodec,
    topics: &[Topic],
    progress: impl FnMut(u64, u64),
) -> Result<Vec<DomainEvent>, ProjectionError> {
    let ends = high_watermarks(brokers, topics)?;
    read_log_to(brokers, codec, &ends, progress).await
}

/// The high watermark of every non-empty partition of `topics`: the end of everything
/// acknowledged so far (see `schemas::kafka::reader_config`).
pub fn high_watermarks(brokers: &str, topics: &[Topic]) -> Result<Positions, ProjectionError> {
    let consumer: BaseConsumer = schemas::kafka::watermark_config(brokers).create()?;
    let timeout = Duration::from_secs(10);
    let mut ends = Positions::new();
    for &topic in topics {
        let count = schemas::kafka::partition_count(&consumer, topic.name(), timeout)?;
        if count == 0 {
            return Err(ProjectionError::Other(format!(
                "topic {} does not exist",
                topic.name()
            )));
        }
        for p in 0..count {
            let (_, high) = consumer.fetch_watermarks(topic.name(), p, timeout)?;
            if high > 0 {
                ends.insert((topic, p), high);
            }
        }
    }
    Ok(ends)
}

/// Every decodable event before `until` (next offset per partition), partitions in order.
pub async fn read_log_to(
    brokers: &str,
    codec: &EventCodec,
    until: &Positions,
    mut progress: impl FnMut(u64, u64),
) -> Result<Vec<DomainEvent>, ProjectionError> {
    let consumer: BaseConsumer<schemas::kafka::ReaderContext> =
        schemas::kafka::reader_config(brokers)
            .set("group.id", "chat-verify")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "5")
            .set("enable.partition.eof", "true")
            .create_with_context(schemas::kafka::ReaderContext)?;
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for (&(topic, p), &end) in until {
        if end > 0 {
            ends.insert((topic.name().to_string(), p), end);
            assignment.add_partition_offset(topic.name(), p, Offset::Beginning)?;
        }
    }
    let total: i64 = ends.values().sum();
    let mut events = Vec::new();
    if ends.is_empty() {
        return Ok(events);
    }
    consumer.assign(&assignment)?;
    let mut read = 0u64;
    let mut idle = 0;
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Err(KafkaError::PartitionEOF(_))) => {
                // Past the markers that end a transactional log (see `schemas::kafka::positions`).
                for (topic, partition, next) in schemas::kafka::positions(&consumer) {
                    let key = (topic, partition);
                    if ends.get(&key).is_some_and(|end| next >= *end) {
                        ends.remove(&key);
                    }
                }
            }
            // A broker the client knows of is gone (a node of a cluster down): librdkafka
            // reads from the partitions' current leaders; only a reading that stops fails.
            Some(Err(KafkaError::MessageConsumption(e))) => {
                tracing::warn!(error = %e, "reading the log: consumer error; going on");
            }
            Some(message) => {
                idle = 0;
                let message = message?;
                read += 1;
                let key = (message.topic().to_string(), message.partition());
                let Some(&end) = ends.get(&key) else { continue };
                if message.offset() >= end {
                    continue;
                }
                if message.offset() + 1 >= end {
                    ends.remove(&key);
                }
                if let Ok(event) = codec.decode(message.payload().unwrap_or_default()).await {
                    events.push(event);
                }
                if read.is_multiple_of(10_000) {
                    progress(read, total as u64);
                }
            }
            None => {
                idle += 1;
                if idle > 60 {
                    return Err(ProjectionError::Other(format!(
                        "reading the log stalled with {} partitions unfinished",
                        ends.len()
                    )));
                }
            }
        }
    }
    progress(read, total as u64);
    Ok(events)
}

fn int(d: &Document, key: &str) -> i64 {
    d.get_i64(key)
        .or_else(|_| d.get_i32(key).map(i64::from))
        .unwrap_or(0)
}

/// Live messages per room whose words verify looks up in the search postings.
const SEARCH_SAMPLE: usize = 20;

/// Differences between a message as the history shows it (API JSON) and the log's view of it.
fn shown_diffs(
    diffs: &mut Vec<String>,
    what: &str,
    m: &serde_json::Value,
    expected: &MessageModel,
) {
    let reactions: BTreeSet<(String, String)> = m["reactions"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .flat_map(|g| {
                    let emoji = g["emoji"].as_str().unwrap_or_default().to_string();
                    g["user_ids"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|u| u.as_str())
                        .map(move |u| (u.to_string(), emoji.clone()))
                })
                .collect()
        })
        .unwrap_or_default();
    let actual = (
        m["room_id"].as_str().unwrap_or_default(),
        m["seq"].as_i64().unwrap_or_default(),
        m["user_id"].as_str().unwrap_or_default(),
        m["content"].as_str().unwrap_or_default(),
        m["deleted"].as_bool().unwrap_or(false),
        !m["edited_at"].is_null(),
    );
    let wanted = (
        expected.room_id.as_str(),
        expected.seq,
        expected.user_id.as_str(),
        expected.content.as_str(),
        expected.deleted,
        expected.edited,
    );
    if actual != wanted {
        diffs.push(format!("{what}: shown {actual:?}, log says {wanted:?}"));
    }
    let call = expected.call.as_ref().map(|c| c.json());
    if m.get("call") != call.as_ref() {
        diffs.push(format!(
            "{what}: call {:?}, log says {call:?}",
            m.get("call")
        ));
    }
    if reactions != expected.reactions {
        diffs.push(format!(
            "{what}: reactions {reactions:?}, log says {:?}",
            expected.reactions
        ));
    }
}

pub async fn verify_mongo(db: &Database, model: &Model) -> Result<Vec<String>, ProjectionError> {
    let mut diffs = Vec::new();
    let mut stored: BTreeMap<String, Document> = BTreeMap::new();
    let mut cursor = db.collection::<Document>(MESSAGES).find(doc! {}).await?;
    while let Some(d) = cursor.try_next().await? {
        if let Ok(id) = d.get_str("_id") {
            stored.insert(id.to_string(), d);
        }
    }
    for (id, expected) in &model.messages {
        let Some(d) = stored.remove(id) else {
            diffs.push(format!("message {id}: missing"));
            continue;
        };
        let shown = read_model::history::message_json(&d);
        shown_diffs(&mut diffs, &format!("message {id}"), &shown, expected);
    }
    for id in stored.keys() {
        diffs.push(format!("message {id}: stored but not in the log"));
    }
    // The history as readers page it: each room's buckets walked from its head along the
    // links hold exactly the log's messages, newest first, as they are now.
    let mut by_room: BTreeMap<&str, Vec<(i64, &String)>> = BTreeMap::new();
    for (id, m) in &model.messages {
        by_room
            .entry(m.room_id.as_str())
            .or_default()
            .push((m.seq, id));
    }
    for room_id in model.rooms.keys() {
        let mut expected = by_room.remove(room_id.as_str()).unwrap_or_default();
        expected.sort_by(|a, b| b.cmp(a));
        let mut walked = Vec::new();
        let mut walk = Walk::new(db, room_id, Start::Newest).await?;
        while let Some(messages) = walk.next_bucket().await? {
            walked.extend(messages);
        }
        let walked_ids: Vec<&str> = walked
            .iter()
            .map(|m| m["message_id"].as_str().unwrap_or_default())
            .collect();
        let expected_ids: Vec<&str> = expected.iter().map(|(_, id)| id.as_str()).collect();
        if walked_ids != expected_ids {
            diffs.push(format!(
                "room {room_id}: history holds {} messages {:?}..., log says {} {:?}...",
                walked_ids.len(),
                &walked_ids[..walked_ids.len().min(3)],
                expected_ids.len(),
                &expected_ids[..expected_ids.len().min(3)]
            ));
            continue;
        }
        for m in &walked {
            let id = m["message_id"].as_str().unwrap_or_default();
            if let Some(expected) = model.messages.get(id) {
                shown_diffs(
                    &mut diffs,
                    &format!("history of {room_id}, message {id}"),
                    m,
                    expected,
                );
            }
        }
        // Search finds live messages by their words as they are now (a sample per room: every
        // one would cost a lookup per word of the whole history).
        let live = expected
            .iter()
            .filter(|(_, id)| model.messages.get(*id).is_some_and(|m| !m.deleted));
        for (seq, id) in live.step_by(7).take(SEARCH_SAMPLE) {
            let words = read_model::text::tokens(&model.messages[*id].content);
            let Some(word) = words.last() else { continue };
            let below = read_model::search::Below {
                seq: Some(seq + 1),
                message_id: None,
            };
            let newest = model.rooms[room_id].last_seq;
            let word = std::slice::from_ref(word);
            let found =
                read_model::search::search_room(db, room_id, newest, word, below, 1).await?;
            if found.first().and_then(|m| m["message_id"].as_str()) != Some(id.as_str()) {
                diffs.push(format!(
                    "room {room_id}: search for {:?} below seq {} does not find message {id}",
                    word[0],
                    seq + 1
                ));
            }
        }
    }
    for (room_id, expected) in &model.rooms {
        match db
            .collection::<Document>(ROOMS)
            .find_one(doc! {"_id": room_id})
            .await?
        {
            None => diffs.push(format!("room {room_id}: missing")),
            Some(d) => {
                let actual = (
                    int(&d, "last_seq"),
                    int(&d, "member_count"),
                    int(&d, "message_count"),
                    d.get_str("name").unwrap_or_default(),
                );
                let wanted = (
                    expected.last_seq,
                    expected.member_count,
                    expected.message_count,
                    expected.name.as_str(),
                );
                if actual != wanted {
                    diffs.push(format!("room {room_id}: stored (last_seq, members, messages, name) {actual:?}, log says {wanted:?}"));
                }
            }
        }
    }
    for ((room, user), expected) in &model.memberships {
        let id = crate::mongo::membership_id(room, user);
        match db
            .collection::<Document>(MEMBERSHIPS)
            .find_one(doc! {"_id": &id})
            .await?
        {
            None => diffs.push(format!("membership {id}: missing")),
            Some(d) => {
                let actual = (
                    d.get_str("status").unwrap_or_default(),
                    d.get_str("role").unwrap_or_default(),
                    int(&d, "read_seq"),
                );
                let wanted = (
                    expected.status.as_str(),
                    expected.role.as_str(),
                    expected.read_seq,
                );
                if actual != wanted {
                    diffs.push(format!(
                        "membership {id}: stored {actual:?}, log says {wanted:?}"
                    ));
                }
            }
        }
    }
    Ok(diffs)
}

pub async fn verify_redis(
    redis: &ConnectionManager,
    prefix: &str,
    model: &Model,
) -> Result<Vec<String>, ProjectionError> {
    let mut redis = redis.clone();
    let mut diffs = Vec::new();
    for (room, expected) in &model.rooms {
        let members: BTreeSet<String> = redis::cmd("SMEMBERS")
            .arg(format!("{prefix}members:{room}"))
            .query_async(&mut redis)
            .await?;
        if members != expected.members {
            diffs.push(format!(
                "members:{room}: {} stored, {} in the log",
                members.len(),
                expected.members.len()
            ));
        }
        let presence: BTreeSet<String> = redis::cmd("SMEMBERS")
            .arg(format!("{prefix}presence:{room}"))
            .query_async(&mut redis)
            .await?;
        let wanted = model.presence(room);
        if presence != wanted {
            diffs.push(format!(
                "presence:{room}: stored {presence:?}, log says {wanted:?}"
            ));
        }
        let stats: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(format!("{prefix}room_stats:{room}"))
            .query_async(&mut redis)
            .await?;
        let actual = (
            stats.get("member_count").copied().unwrap_or(-1),
            stats.get("message_count").copied().unwrap_or(-1),
        );
        if actual != (expected.member_count, expected.message_count) {
            diffs.push(format!(
                "room_stats:{room}: stored (members, messages) {actual:?}, log says {:?}",
                (expected.member_count, expected.message_count)
            ));
        }
    }
    Ok(diffs)
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct KindCount {
    kind: String,
    n: u64,
}

pub async fn verify_clickhouse(
    client: &clickhouse::Client,
    db: &str,
    model: &Model,
) -> Result<Vec<String>, ProjectionError> {
    let ch = |e: clickhouse::error::Error| ProjectionError::ClickHouse(e.to_string());
    let mut diffs = Vec::new();
    let counts: Vec<KindCount> = client
        .query(&format!(
            "SELECT kind, count() AS n FROM {db}.events GROUP BY kind"
        ))
        .fetch_all()
        .await
        .map_err(ch)?;
    let stored: BTreeMap<String, usize> =
        counts.into_iter().map(|k| (k.kind, k.n as usize)).collect();
    if stored != model.events_by_kind {
        diffs.push(format!(
            "events per kind: stored {stored:?}, log says {:?}",
            model.events_by_kind
        ));
    }
    let ids: Vec<String> = client
        .query(&format!("SELECT event_id FROM {db}.events"))
        .fetch_all()
        .await
        .map_err(ch)?;
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    if unique.len() != ids.len() {
        diffs.push(format!(
            "events: {} rows but {} distinct event ids (duplicates)",
            ids.len(),
            unique.len()
        ));
    }
    let missing = model.event_ids.difference(&unique).count();
    let extra = unique.difference(&model.event_ids).count();
    if missing > 0 || extra > 0 {
        diffs.push(format!(
            "events: {missing} in the log but not stored, {extra} stored but not in the log"
        ));
    }
    // The materialized views saw every row the table got.
    for (table, column, kind) in [
        ("messages_per_room_minute", "messages", "message_posted"),
        ("call_minutes", "calls", "call_ended"),
    ] {
        let sums: Vec<u64> = client
            .query(&format!("SELECT toUInt64(sum({column})) FROM {db}.{table}"))
            .fetch_all()
            .await
            .map_err(ch)?;
        let stored = sums.first().copied().unwrap_or(0) as usize;
        let expected = model.events_by_kind.get(kind).copied().unwrap_or(0);
        if stored != expected {
            diffs.push(format!(
                "{table}: sum({column}) is {stored}, the log has {expected} {kind}"
            ));
        }
    }
    Ok(diffs)
}
