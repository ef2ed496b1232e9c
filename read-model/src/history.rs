//! Room history shaped for equality lookups.
//!
//! FerretDB pushes only equality filters down to PostgreSQL and sorts in its own process, so
//! "the newest 50 messages of a room" as a `room_id` + `seq` range with a sort reads and sorts
//! the whole room. History is therefore also kept in **buckets**: one document per room and run
//! of [`BUCKET_SEQS`] consecutive `seq`s, `_id` = [`bucket_id`], holding that run's messages
//! under `m.<seq>`. A page is one to a few `_id` lookups, whatever the room's size, on FerretDB
//! and on MongoDB alike.
//!
//! Bucket document: `{_id, room_id, b, prev, next?, m: {"<seq>": message}}` where `b` is the
//! bucket number (`seq / BUCKET_SEQS`), `prev` the room's previous bucket that holds messages
//! (-1 for the first) and `next` the following one (absent on the newest). Buckets exist only
//! where a room has messages (`seq` counts every room event, joins and reactions too), and the
//! links step over the gaps. The room document's `history_head` is its newest bucket.
//!
//! The message documents are those of [`crate::MESSAGES`] (same fields, `_id` = message id).

use mongodb::Database;
use mongodb::bson::{Bson, Document, doc};

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
    pub async fn new(
        db: &'a Database,
        room: &'a str,
        start: Start,
    ) -> mongodb::error::Result<Self> {
        let head = db
            .collection::<Document>(ROOMS)
            .find_one(doc! {"_id": room})
            .await?
            .and_then(|r| integer(&r, "history_head"));
        let next = head.map(|head| match start {
            Start::Newest => head,
            Start::Before(seq) => bucket_of(seq).min(head),
            Start::After(seq) => bucket_of(seq.saturating_add(1)).min(head),
        });
        Ok(Self {
            db,
            room,
            start,
            next,
            head: head.unwrap_or(-1),
            first: true,
        })
    }

    /// The next bucket's messages that belong to the walk, in its order; None when it is over.
    pub async fn next_bucket(&mut self) -> mongodb::error::Result<Option<Vec<Document>>> {
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

    fn messages(&self, bucket: &Document, backwards: bool) -> Vec<Document> {
        let mut messages: Vec<(i64, Document)> = bucket
            .get_document("m")
            .map(|m| {
                m.iter()
                    .filter_map(|(key, value)| Some((key.parse::<i64>().ok()?, value)))
                    .filter(|(seq, _)| match self.start {
                        Start::Newest => true,
                        Start::Before(before) => *seq < before,
                        Start::After(after) => *seq > after,
                    })
                    .filter_map(|(seq, value)| Some((seq, value.as_document()?.clone())))
                    .collect()
            })
            .unwrap_or_default();
        messages.sort_by_key(|(seq, _)| *seq);
        if backwards {
            messages.reverse();
        }
        messages.into_iter().map(|(_, m)| m).collect()
    }
}

/// Up to `limit` messages from `start`, and whether there are more beyond them.
pub async fn page(
    db: &Database,
    room: &str,
    start: Start,
    limit: usize,
) -> mongodb::error::Result<(Vec<Document>, bool)> {
    let mut walk = Walk::new(db, room, start).await?;
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
