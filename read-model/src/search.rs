//! Search postings shaped for equality lookups and insert-only writes.
//!
//! FerretDB answers equality on an indexed field from PostgreSQL but evaluates `$all` over a
//! token array, ranges and sorts in its own process over every candidate document, and it
//! updates a few hundred documents a second while it inserts thousands. So the token index is
//! a collection of small documents that are only ever inserted (a replay inserts the same `_id`s
//! again and the duplicates are refused), looked up by equality:
//!
//! - a **chunk**: `{_id: "<room>:<token>:<block>:<first>-<last>", p: "<room>:<token>:<block>",
//!   b: <block>, s: [seq, ...]}`: the `seq`s of one projector batch's messages in `block`
//!   (`seq / BLOCK_SEQS`) that contain `token`, named by the first and last event of the batch
//!   that added to it (a replay of other batch boundaries adds overlapping chunks; a search
//!   reads the union);
//! - a **directory entry** saying that a block holds the token: `k: "<room>:<token>"` on a
//!   small chunk, or a document of its own `{_id: "<room>:<token>:<block>", k, b}` when the
//!   chunk is large, written when the projector first sees the (room, token, block).
//!
//! A search in a room reads the newest few blocks' chunks (`p`) directly, then looks up each
//! query token's directory (`k`) and walks on through the blocks that hold every token,
//! intersecting the tokens' chunks in each. It reads the candidates from the history buckets
//! and checks them against the message as it is now (its content's tokens; an edit or a
//! delete leaves stale postings behind, the message decides).

use std::collections::{BTreeMap, BTreeSet};

use futures::TryStreamExt;
use mongodb::Database;
use mongodb::bson::{Bson, Document, doc};

use serde_json::Value;

use crate::history::{self, HISTORY};
use crate::text;

pub const SEARCH: &str = "search";

/// `seq`s per block: a room of 1,000,000 events has 245 blocks, so even a token in every block
/// has a short directory, and a block's chunks of a common token are a few documents.
pub const BLOCK_SEQS: i64 = 4096;

/// A first chunk this small carries the directory key itself (most rare tokens' only chunk);
/// a larger one gets a directory document, so directories stay small to read.
pub const INLINE_DIRECTORY_MAX: usize = 16;

pub fn block_of(seq: i64) -> i64 {
    seq.max(0) / BLOCK_SEQS
}

pub fn directory_key(room: &str, token: &str) -> String {
    format!("{room}:{token}")
}

pub fn block_key(room: &str, token: &str, block: i64) -> String {
    format!("{room}:{token}:{block}")
}

/// `events`: "<first>-<last>", the event seqs that added to the chunk.
pub fn chunk_id(room: &str, token: &str, block: i64, events: &str) -> String {
    format!("{room}:{token}:{block}:{events}")
}

/// The indexed fields (besides `_id`).
pub const INDEXED: [&str; 2] = ["k", "p"];

/// Where a search page starts: below a `seq` of the room, and/or below a message id (UUID v7,
/// so in time order across rooms).
#[derive(Debug, Clone, Copy, Default)]
pub struct Below<'a> {
    pub seq: Option<i64>,
    pub message_id: Option<&'a str>,
}

/// Blocks below the top that a search reads directly before it consults the directories: a
/// common word fills a page from the newest block, and skipping its directory (hundreds of
/// entries in a busy room) is most of that search's time.
const PROBE_BLOCKS: i64 = 4;

/// Up to `want` messages of `room` containing every token, newest first, below `below`;
/// deleted messages and stale postings are left out. `newest_seq`: the room's last `seq`
/// (its document's `last_seq`), where the walk starts.
pub async fn search_room(
    db: &Database,
    room: &str,
    newest_seq: i64,
    tokens: &[String],
    below: Below<'_>,
    want: usize,
) -> mongodb::error::Result<Vec<Value>> {
    let mut search = Search {
        db,
        room,
        tokens,
        below,
        want,
        found: Vec::new(),
        buckets: BTreeMap::new(),
    };
    let top = below
        .seq
        .map_or(i64::MAX, block_of)
        .min(block_of(newest_seq));
    let probed = (top - PROBE_BLOCKS + 1).max(0);
    for block in (probed..=top).rev() {
        if search.block(block).await? {
            return Ok(search.found);
        }
    }
    if probed == 0 {
        return Ok(search.found);
    }
    // Further back, only the blocks that hold every token.
    let mut common: Option<BTreeSet<i64>> = None;
    for token in tokens {
        let mut blocks = BTreeSet::new();
        let mut cursor = db
            .collection::<Document>(SEARCH)
            .find(doc! {"k": directory_key(room, token)})
            .projection(doc! {"b": 1})
            .await?;
        while let Some(d) = cursor.try_next().await? {
            if let Some(b) = history::integer(&d, "b").filter(|&b| b < probed) {
                blocks.insert(b);
            }
        }
        common = Some(match common {
            None => blocks,
            Some(c) => c.intersection(&blocks).copied().collect(),
        });
    }
    for block in common.unwrap_or_default().into_iter().rev() {
        if search.block(block).await? {
            break;
        }
    }
    Ok(search.found)
}

struct Search<'a> {
    db: &'a Database,
    room: &'a str,
    tokens: &'a [String],
    below: Below<'a>,
    want: usize,
    found: Vec<Value>,
    /// Buckets read so far: their messages by seq.
    buckets: BTreeMap<i64, BTreeMap<i64, Value>>,
}

impl Search<'_> {
    /// Adds the block's matches, newest first; true once `want` are found.
    async fn block(&mut self, block: i64) -> mongodb::error::Result<bool> {
        let postings = self.db.collection::<Document>(SEARCH);
        let mut seqs: Option<BTreeSet<i64>> = None;
        for token in self.tokens {
            let mut these = BTreeSet::new();
            let mut cursor = postings
                .find(doc! {"p": block_key(self.room, token, block)})
                .await?;
            while let Some(d) = cursor.try_next().await? {
                if let Ok(list) = d.get_array("s") {
                    these.extend(list.iter().filter_map(as_i64));
                }
            }
            let both: BTreeSet<i64> = match seqs {
                None => these,
                Some(s) => s.intersection(&these).copied().collect(),
            };
            if both.is_empty() {
                return Ok(false);
            }
            seqs = Some(both);
        }
        for seq in seqs.unwrap_or_default().into_iter().rev() {
            if self.below.seq.is_some_and(|below| seq >= below) {
                continue;
            }
            let bucket = history::bucket_of(seq);
            if let std::collections::btree_map::Entry::Vacant(entry) = self.buckets.entry(bucket) {
                let stored = self
                    .db
                    .collection::<Document>(HISTORY)
                    .find_one(doc! {"_id": history::bucket_id(self.room, bucket)})
                    .await?;
                entry.insert(
                    stored
                        .map(|b| history::stored_messages(&b).into_iter().collect())
                        .unwrap_or_default(),
                );
            }
            let Some(message) = self.buckets[&bucket].get(&seq) else {
                continue;
            };
            let older = self
                .below
                .message_id
                .is_none_or(|id| message["message_id"].as_str().is_some_and(|own| own < id));
            if older && matches(message, self.tokens) {
                self.found.push(message.clone());
                if self.found.len() >= self.want {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// Whether the message, as it is now, is live and holds every token.
fn matches(message: &Value, tokens: &[String]) -> bool {
    if message["deleted"].as_bool().unwrap_or(false) {
        return false;
    }
    let held = text::tokens(message["content"].as_str().unwrap_or_default());
    tokens.iter().all(|t| held.contains(t))
}

fn as_i64(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int64(v) => Some(*v),
        Bson::Int32(v) => Some(i64::from(*v)),
        _ => None,
    }
}
