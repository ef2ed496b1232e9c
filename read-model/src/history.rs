//! Room history shaped for equality lookups.
//!
//! FerretDB pushes only equality filters down to PostgreSQL and sorts in its own process, so
//! "the newest 50 messages of a room" as a `room_id` + `seq` range with a sort reads and sorts
//! the whole room. History is therefore also kept in **buckets**: one document per room and run
//! of [`BUCKET_SEQS`] consecutive `seq`s, `_id` = [`bucket_id`], holding that run's messages
//! under `m.<seq>`. A page is one to a few `_id` lookups, whatever the room's size, on FerretDB
//! and on MongoDB alike.
//!
//! Bucket document: `{_id, room_id, b, prev, next?, m: {"<seq>": "<message JSON>"}}` where `b`
//! is the bucket number (`seq / BUCKET_SEQS`), `prev` the room's previous bucket that holds
//! messages (-1 for the first) and `next` the following one (absent on the newest). Buckets
//! exist only where a room has messages (`seq` counts every room event, joins and reactions
//! too), and the links step over the gaps. The room document's `history_head` is its newest
//! bucket.
//!
//! Each message is kept as the JSON text the API answers ([`message_json`] of its
//! [`crate::MESSAGES`] document), not as a nested document: FerretDB converts every nested
//! value between BSON and PostgreSQL's jsonb on each read and write, and a bucket of 128
//! nested messages took 16-20 ms to read by `_id` where the same bucket of strings takes
//! 2-3 ms (measured on the stack's FerretDB). Readers serve the text as it is.

use std::collections::BTreeMap;

use mongodb::Database;
use mongodb::bson::{Bson, Document, doc};
use serde_json::{Value, json};

use crate::ROOMS;

pub const HISTORY: &str = "history";

/// `seq`s per bucket: a page of 50 spans one or two buckets, and a bucket of 128 messages
/// (tens of KB) decodes in about a millisecond.
pub const BUCKET_SEQS: i64 = 128;

/// Buckets a walk steps over looking for one that exists, when a cursor points into a gap
/// (clients normally pass cursors they were given, which always name an existing bucket).
const MAX_GAP: i64 = 256;

pub fn bucket_of(seq: i64) -> i64 {
    seq.max(0) / BUCKET_SEQS
}

pub fn bucket_id(room: &str, bucket: i64) -> String {
    format!("{room}:{bucket}")
}

/// The field of message `seq` inside its bucket.
pub fn message_field(seq: i64) -> String {
    format!("m.{seq}")
}

/// Where a walk starts and which way it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the newest message, backwards.
    Newest,
    /// Messages with `seq` < the given one, newest first.
    Before(i64),
    /// Messages with `seq` > the given one, oldest first.
    After(i64),
}

/// Walks a room's history bucket by bucket, yielding messages in the walk's order.
pub struct Walk<'a> {
    db: &'a Database,
    room: &'a str,
    start: Start,
    /// The next bucket to read, or None when the walk is over.
    next: Option<i64>,
    /// The room's newest bucket.
    head: i64,
    first: bool,
}

impl<'a> Walk<'a> {
    /// Reads the room's head first; see [`Walk::from_room`] when the room document is at hand.
    pub async fn new(
        db: &'a Database,
        room: &'a str,
        start: Start,
    ) -> mongodb::error::Result<Self> {
        let stored = db
            .collection::<crate::documents::RoomDoc>(ROOMS)
            .find_one(doc! {"_id": room})
            .await?;
        Ok(Self::from_room(
            db,
            room,
            stored.and_then(|r| r.history_head),
            start,
        ))
    }

    /// A walk of `room` from its newest bucket `head` (the room document's `history_head`,
    /// which the caller has read).
    pub fn from_room(db: &'a Database, room: &'a str, head: Option<i64>, start: Start) -> Self {
        let next = head.map(|head| match start {
            Start::Newest => head,
            Start::Before(seq) => bucket_of(seq).min(head),
            Start::After(seq) => bucket_of(seq.saturating_add(1)).min(head),
        });
        Self {
            db,
            room,
            start,
            next,
            head: head.unwrap_or(-1),
            first: true,
        }
    }

    /// The next bucket's messages that belong to the walk, in its order; None when it is over.
    pub async fn next_bucket(&mut self) -> mongodb::error::Result<Option<Vec<Value>>> {
        let buckets = self.db.collection::<Document>(HISTORY);
        while let Some(b) = self.next {
            let found = buckets
                .find_one(doc! {"_id": bucket_id(self.room, b)})
                .await?;
            let Some(bucket) = found else {
                // Only a walk's first bucket can be missing (a cursor into a gap): step towards
                // the messages until one exists.
                let gap = (b - self.first_bucket()).abs();
                self.next = match self.start {
                    Start::After(_) if b < self.head && gap < MAX_GAP && self.first => Some(b + 1),
                    Start::Before(_) if b > 0 && gap < MAX_GAP && self.first => Some(b - 1),
                    _ => None,
                };
                continue;
            };
            self.first = false;
            let backwards = !matches!(self.start, Start::After(_));
            let link = if backwards { "prev" } else { "next" };
            self.next = integer(&bucket, link).filter(|&n| n >= 0);
            return Ok(Some(self.messages(&bucket, backwards)));
        }
        Ok(None)
    }

    fn first_bucket(&self) -> i64 {
        match self.start {
            Start::Newest => self.head,
            Start::Before(seq) => bucket_of(seq).min(self.head),
            Start::After(seq) => bucket_of(seq.saturating_add(1)).min(self.head),
        }
    }

    fn messages(&self, bucket: &Document, backwards: bool) -> Vec<Value> {
        let mut messages: Vec<(i64, Value)> = stored_messages(bucket)
            .into_iter()
            .filter(|(seq, _)| match self.start {
                Start::Newest => true,
                Start::Before(before) => *seq < before,
                Start::After(after) => *seq > after,
            })
            .collect();
        if backwards {
            messages.reverse();
        }
        messages.into_iter().map(|(_, m)| m).collect()
    }
}

/// A bucket's messages by seq, parsed (a value that is not a message is skipped).
pub fn stored_messages(bucket: &Document) -> Vec<(i64, Value)> {
    let mut messages: Vec<(i64, Value)> = bucket
        .get_document("m")
        .map(|m| {
            m.iter()
                .filter_map(|(key, value)| {
                    let seq = key.parse::<i64>().ok()?;
                    let message = serde_json::from_str::<Value>(value.as_str()?).ok()?;
                    Some((seq, message))
                })
                .collect()
        })
        .unwrap_or_default();
    messages.sort_by_key(|(seq, _)| *seq);
    messages
}

/// The message as API.md shows it, from its [`crate::MESSAGES`] document: reactions grouped
/// by emoji.
pub fn message_json(m: &Document) -> Value {
    let mut reactions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Ok(list) = m.get_array("reactions") {
        for r in list.iter().filter_map(|r| r.as_document()) {
            if let (Ok(emoji), Ok(user)) = (r.get_str("emoji"), r.get_str("user_id")) {
                reactions
                    .entry(emoji.to_string())
                    .or_default()
                    .push(user.to_string());
            }
        }
    }
    let attachments: Vec<Value> = m
        .get_array("attachments")
        .map(|list| {
            list.iter()
                .filter_map(|a| a.as_document())
                .map(|a| {
                    json!({
                        "file_id": a.get_str("file_id").unwrap_or_default(),
                        "filename": a.get_str("filename").unwrap_or_default(),
                        "size": integer(a, "size").unwrap_or_default(),
                        "mime_type": a.get_str("mime_type").unwrap_or_default(),
                        "url": a.get_str("url").unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let mut shown = json!({
        "message_id": m.get_str("_id").unwrap_or_default(),
        "room_id": m.get_str("room_id").unwrap_or_default(),
        "seq": integer(m, "seq").unwrap_or_default(),
        "user_id": m.get_str("user_id").unwrap_or_default(),
        "content": m.get_str("content").unwrap_or_default(),
        "message_type": m.get_str("message_type").unwrap_or("text"),
        "timestamp": m.get_datetime("timestamp").map(|t| t.timestamp_millis()).unwrap_or_default(),
        "edited_at": m.get_datetime("edited_at").ok().map(|t| t.timestamp_millis()),
        "deleted": m.get_bool("deleted").unwrap_or(false),
        "reply_to": m.get_str("reply_to").ok(),
        "reactions": reactions.into_iter().map(|(emoji, user_ids)| json!({"emoji": emoji, "user_ids": user_ids})).collect::<Vec<_>>(),
        "attachments": attachments,
    });
    if let Ok(call) = m.get_document("call") {
        shown["call"] = call_json(call);
    }
    shown
}

/// The `call` part of a call's history entry (`message_type` `call`): what a client shows for
/// it (ringing, ongoing with whom, or ended: why and how long it was talked).
fn call_json(c: &Document) -> Value {
    let ids = |list: &str| -> Vec<String> {
        let mut ids: Vec<String> = c
            .get_array(list)
            .map(|l| {
                l.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    };
    json!({
        "media": c.get_str("media").unwrap_or("video"),
        // Entries written before group calls have none: they were peer to peer.
        "topology": c.get_str("topology").unwrap_or("p2p"),
        "status": c.get_str("status").unwrap_or("ended"),
        "participants": ids("participants"),
        "took_part": ids("took_part"),
        "duration_ms": integer(c, "duration_ms").unwrap_or_default(),
        "reason": c.get_str("reason").ok(),
        "ended_at": c.get_datetime("ended_at").ok().map(|t| t.timestamp_millis()),
    })
}

/// What a bucket stores for a message.
pub fn stored_form(m: &Document) -> String {
    message_json(m).to_string()
}

/// Up to `limit` messages from `start` as the API shows them, and whether there are more.
/// `stored`: the room's document.
pub async fn page(
    db: &Database,
    room: &str,
    head: Option<i64>,
    start: Start,
    limit: usize,
) -> mongodb::error::Result<(Vec<Value>, bool)> {
    let mut walk = Walk::from_room(db, room, head, start);
    let mut out = Vec::with_capacity(limit + 1);
    while out.len() <= limit {
        match walk.next_bucket().await? {
            Some(messages) => out.extend(messages),
            None => break,
        }
    }
    let more = out.len() > limit;
    out.truncate(limit);
    Ok((out, more))
}

/// An integer field however the server stored it (FerretDB and MongoDB may answer int32 for
/// small values written as int64 by other clients).
pub fn integer(d: &Document, key: &str) -> Option<i64> {
    match d.get(key)? {
        Bson::Int64(v) => Some(*v),
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}
