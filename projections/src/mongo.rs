//! The MongoDB read model: message history, rooms, memberships, shared files. The layout is
//! the read-model contract (`read_model`, which documents each collection); this module writes it.
//!
//! Exactly-once without transactions (FerretDB has none): each batch writes effects first, then
//! one update per touched room that moves `last_seq` and applies the room's counters, guarded by
//! the room's previous `last_seq`, then the partition checkpoints. A crash anywhere replays from
//! the checkpoint; the rooms' `last_seq` skips what was fully applied, inserts are keyed by
//! message id, message updates are guarded by the message's `last_seq`, history buckets are set
//! field by field (the same values again on a replay), and everything else is replayed in order
//! from the room's progress point, so the end state is the same.

use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::InsertManyOptions;
use mongodb::{Collection, Database};
use schemas::DomainEvent;
use schemas::topics::Topic;

use crate::deadletter::DeadLetter;
use crate::enum_str;
use crate::error::ProjectionError;
use crate::gate::{Gate, RoomCursor};
use crate::runner::{Counts, Project};
use crate::source::{Batch, Positions};
use read_model::history::{self, HISTORY};
use read_model::search::{self, SEARCH};
use read_model::text;
pub use read_model::{FILES, MEMBERSHIPS, MESSAGES, PROGRESS, ROOMS, membership_id};

/// Documents per `insert_many` (see `flush_inserts`).
const INSERT_SLICE: usize = 1000;

/// (room, token, block)s remembered as having a directory entry; beyond this many the memory
/// is dropped and entries are written again (duplicates the store refuses).
const SEEN_BLOCKS_MAX: usize = 500_000;

pub struct MongoProjector {
    db: Database,
    messages: Collection<Document>,
    rooms: Collection<Document>,
    memberships: Collection<Document>,
    files: Collection<Document>,
    progress: Collection<Document>,
    history: Collection<Document>,
    search: Collection<Document>,
    gate: Gate,
    /// Each known room's newest history bucket (-1: none yet), loaded with the gate's cursor
    /// and cleared with it, so after a failed batch both restart from what the store holds.
    heads: HashMap<String, i64>,
    /// Block keys (`read_model::search::block_key`) whose directory entry this process wrote.
    seen_blocks: std::collections::HashSet<String>,
    /// The base name whose live pointer this projector follows (`crate::live`).
    pointer: Option<String>,
    /// The checkpoints the store held at open and this projector wrote since: each write of
    /// them is conditional on the store still holding them (see `store_checkpoints`).
    written: std::sync::Mutex<Option<Positions>>,
}

impl MongoProjector {
    pub async fn open(db: Database) -> Result<Self, ProjectionError> {
        read_model::ensure_indexes(&db).await?;
        Ok(Self::attach(db))
    }

    /// The projector over `db` without preparing indexes (for reading its state, e.g. verify).
    pub fn attach(db: Database) -> Self {
        Self {
            messages: db.collection(MESSAGES),
            rooms: db.collection(ROOMS),
            memberships: db.collection(MEMBERSHIPS),
            files: db.collection(FILES),
            progress: db.collection(PROGRESS),
            history: db.collection(HISTORY),
            search: db.collection(SEARCH),
            db,
            gate: Gate::default(),
            heads: HashMap::new(),
            seen_blocks: Default::default(),
            pointer: None,
            written: std::sync::Mutex::new(None),
        }
    }

    /// Opens the live generation of `base` and follows its pointer.
    pub async fn open_live(client: mongodb::Client, base: &str) -> Result<Self, ProjectionError> {
        let live = read_model::live::mongo_live(&client, base).await?;
        let mut projector = Self::open(client.database(&live)).await?;
        projector.pointer = Some(base.to_string());
        Ok(projector)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn topics() -> Vec<Topic> {
        vec![Topic::RoomEvents]
    }

    async fn restore_cursors(&mut self, batch: &Batch) -> Result<(), ProjectionError> {
        let unknown: Vec<String> = batch
            .records
            .iter()
            .filter_map(|r| r.event.envelope().room_id.clone())
            .filter(|room| !self.gate.knows(room))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        // One lookup by _id per room: FerretDB answers those from its index, while an $in over
        // several ids is not pushed down to PostgreSQL and scans the collection.
        let mut found = HashMap::new();
        for room in &unknown {
            if let Some(d) = self.rooms.find_one(doc! {"_id": room}).await? {
                self.heads.insert(
                    room.clone(),
                    history::integer(&d, "history_head").unwrap_or(-1),
                );
                found.insert(
                    room.clone(),
                    RoomCursor::restored(
                        d.get_i64("last_seq").unwrap_or(0),
                        d.get_str("last_event_id").ok().map(str::to_string),
                    ),
                );
            }
        }
        for room in unknown {
            self.heads.entry(room.clone()).or_insert(-1);
            let cursor = found.remove(&room).unwrap_or_default();
            self.gate.restore(&room, cursor);
        }
        Ok(())
    }

    /// Inserts the batch's posted messages as the batch left them. A message the store already
    /// holds (a replay) keeps its stored form, unless this batch changed it after posting it:
    /// then the batch saw its whole history up to here and replaces it.
    async fn flush_posted(&self, posted: PostedInBatch) -> Result<(), ProjectionError> {
        let refused = insert_refusing_duplicates(&self.messages, &posted.docs).await?;
        for i in refused.into_iter().filter(|i| posted.changed.contains(i)) {
            let message = &posted.docs[i];
            self.messages
                .replace_one(
                    doc! {"_id": message.get_str("_id").unwrap_or_default()},
                    message,
                )
                .await?;
        }
        Ok(())
    }

    /// Changes the message with `change` unless an event at or after `seq` was applied to it,
    /// in both its document and its history bucket. Read, compute, replace by `_id` (not one
    /// filtered update): FerretDB answers `_id` equality from its key and scans the collection
    /// for any other filter. Safe because this projector is the only writer of its rooms'
    /// documents.
    /// Returns the message's own `seq` and the message as it now stands, when it exists.
    /// A message posted in the same batch is changed where it waits to be inserted, with its
    /// bucket copy: most reactions and edits follow their post closely, and cost no round trip.
    async fn update_message(
        &self,
        pending: &mut Pending,
        message_id: &str,
        seq: i64,
        change: impl FnOnce(&mut Document),
    ) -> Result<Option<(i64, Document)>, ProjectionError> {
        if let Some(&i) = pending.posted.index.get(message_id) {
            let message = &mut pending.posted.docs[i];
            let at = history::integer(message, "seq").unwrap_or_default();
            if history::integer(message, "last_seq").unwrap_or(0) < seq
                && !message.get_bool("deleted").unwrap_or(false)
            {
                change(message);
                message.insert("last_seq", seq);
                pending.posted.changed.insert(i);
                let room = message.get_str("room_id").unwrap_or_default().to_string();
                pending
                    .history
                    .set_message(&room, at, history::stored_form(message));
            }
            return Ok(Some((at, message.clone())));
        }
        let Some(mut message) = self.messages.find_one(doc! {"_id": message_id}).await? else {
            return Ok(None);
        };
        // Applied already, or the message is gone (nothing changes a deleted message). The
        // bucket copy is written again all the same: a replay of the message's post (after a
        // crash between a batch's writes and its progress) set it back to the posted text,
        // while the message document, inserted only if absent, kept what later events made it.
        let changed = history::integer(&message, "last_seq").unwrap_or(0) < seq
            && !message.get_bool("deleted").unwrap_or(false);
        if changed {
            change(&mut message);
            message.insert("last_seq", seq);
            self.messages
                .replace_one(doc! {"_id": message_id}, &message)
                .await?;
        }
        let (Ok(room), Some(posted)) = (
            message.get_str("room_id"),
            history::integer(&message, "seq"),
        ) else {
            return Ok(None);
        };
        let bucket = history::bucket_id(room, history::bucket_of(posted));
        self.history
            .update_one(
                doc! {"_id": bucket},
                doc! {"$set": {history::message_field(posted): history::stored_form(&message)}},
            )
            .await?;
        Ok(Some((posted, message)))
    }

    /// Adds a new entry (a post, a call) to the room's history and to the batch's inserts.
    fn add_entry(
        &mut self,
        pending: &mut Pending,
        delta: &mut RoomDelta,
        room: &str,
        seq: i64,
        message: Document,
    ) {
        let head = self.heads.entry(room.to_string()).or_insert(-1);
        pending
            .history
            .add(room, head, seq, history::stored_form(&message));
        delta.head = Some(*head);
        pending.posted.push(message);
    }

    /// The batch's posting documents: chunks, and directory entries for blocks this process has
    /// not written one for (inserted refusing the duplicates of a replay).
    fn posting_docs(&mut self, postings: Postings) -> Vec<Document> {
        if self.seen_blocks.len() > SEEN_BLOCKS_MAX {
            self.seen_blocks.clear();
        }
        let mut docs = Vec::new();
        for ((room, token, block), chunk) in postings.chunks {
            let key = search::block_key(&room, &token, block);
            let seqs: Vec<i64> = chunk.seqs.iter().copied().collect();
            let id = search::chunk_id(&room, &token, block, &chunk.id);
            let mut posting = doc! {"_id": id, "p": &key, "b": block, "s": seqs};
            if self.seen_blocks.insert(key.clone()) {
                let directory = search::directory_key(&room, &token);
                if chunk.seqs.len() <= search::INLINE_DIRECTORY_MAX {
                    posting.insert("k", directory);
                } else {
                    docs.push(doc! {"_id": &key, "k": directory, "b": block});
                }
            }
            docs.push(posting);
        }
        docs
    }

    /// Writes the pending bucket changes, one update per bucket, oldest bucket first (so a
    /// bucket's `prev` exists before a reader can reach it from `history_head`).
    async fn flush_history(&self, pending: PendingHistory) -> Result<(), ProjectionError> {
        for ((room, bucket), set) in pending.buckets {
            let mut set = set;
            set.insert("room_id", &room);
            set.insert("b", bucket);
            self.history
                .update_one(
                    doc! {"_id": history::bucket_id(&room, bucket)},
                    doc! {"$set": set},
                )
                .upsert(true)
                .await?;
        }
        Ok(())
    }

    async fn set_membership(
        &self,
        room: &str,
        user: &str,
        fields: Document,
    ) -> Result<(), ProjectionError> {
        let mut set = doc! {"room_id": room, "user_id": user};
        set.extend(fields);
        self.memberships
            .update_one(doc! {"_id": membership_id(room, user)}, doc! {"$set": set})
            .upsert(true)
            .await?;
        Ok(())
    }

    async fn status(
        &self,
        cache: &mut HashMap<(String, String), String>,
        room: &str,
        user: &str,
    ) -> Result<Option<String>, ProjectionError> {
        if let Some(s) = cache.get(&(room.to_string(), user.to_string())) {
            return Ok(Some(s.clone()));
        }
        let found = self
            .memberships
            .find_one(doc! {"_id": membership_id(room, user)})
            .await?;
        Ok(found.and_then(|d| d.get_str("status").ok().map(str::to_string)))
    }

    /// Folds a batch's admitted events into the writes they make: the history and search
    /// documents to insert, and per room what the room document must become.
    async fn fold(
        &mut self,
        batch: &Batch,
        dead_letter: &DeadLetter,
    ) -> Result<Folded, ProjectionError> {
        let mut stats = Counts::default();
        // Per room: seq before the batch (the guard), and what the batch changes on the room doc.
        let mut touched: BTreeMap<String, RoomDelta> = BTreeMap::new();
        let mut pending = Pending::default();
        let mut postings = Postings::default();
        let mut membership_status: HashMap<(String, String), String> = HashMap::new();
        for record in &batch.records {
            let envelope = record.event.envelope();
            let (Some(room), Some(seq)) = (envelope.room_id.clone(), envelope.seq) else {
                continue;
            };
            let before = self.gate.cursor(&room).map(|c| c.last_seq).unwrap_or(0);
            if !self
                .gate
                .admit(record, &room, seq, dead_letter, &mut stats)
                .await?
            {
                continue;
            }
            stats.applied += 1;
            let delta = touched.entry(room.clone()).or_insert_with(|| RoomDelta {
                before,
                ..RoomDelta::default()
            });
            delta.last_seq = seq;
            delta.last_event_id = envelope.event_id.clone();
            delta.last_activity = envelope.occurred_at;
            let at = DateTime::from_millis(envelope.occurred_at);
            use DomainEvent as E;
            match &record.event {
                E::MessagePosted(e) => {
                    let attachments: Vec<Document> = e
                        .attachments
                        .iter()
                        .map(|a| doc! {"file_id": &a.file_id, "filename": &a.filename, "url": &a.url, "size": a.size, "mime_type": &a.mime_type})
                        .collect();
                    for a in &e.attachments {
                        self.files
                            .update_one(
                                doc! {"_id": &a.file_id},
                                doc! {"$addToSet": {"shared": {"message_id": &e.message_id, "room_id": &room}}},
                            )
                            .upsert(true)
                            .await?;
                    }
                    let tokens = text::tokens(&e.content);
                    postings.add(&room, &tokens, seq, seq);
                    let message = doc! {
                        "_id": &e.message_id,
                        "room_id": &room,
                        "seq": seq,
                        "user_id": &e.author_id,
                        "content": &e.content,
                        "message_type": enum_str(&e.message_type),
                        "timestamp": at,
                        "edited_at": Bson::Null,
                        "reply_to": e.reply_to.clone().map(Bson::String).unwrap_or(Bson::Null),
                        "reactions": [],
                        "attachments": attachments,
                        "deleted": false,
                        "last_seq": seq,
                    };
                    self.add_entry(&mut pending, delta, &room, seq, message);
                    delta.messages += 1;
                }
                // A call is an entry of the history where it started, kept up to date as people
                // join and leave and when it ends (its `call` part; see `read_model::history`).
                E::CallStarted(e) => {
                    let message = doc! {
                        "_id": &e.call_id,
                        "room_id": &room,
                        "seq": seq,
                        "user_id": &e.initiator_id,
                        "content": "",
                        "message_type": "call",
                        "timestamp": at,
                        "edited_at": Bson::Null,
                        "reply_to": Bson::Null,
                        "reactions": [],
                        "attachments": [],
                        "deleted": false,
                        "last_seq": seq,
                        "call": {
                            "media": enum_str(&e.media),
                            "topology": enum_str(&e.topology),
                            "status": "ringing",
                            "participants": [&e.initiator_id],
                            "took_part": [&e.initiator_id],
                            "duration_ms": 0_i64,
                            "reason": Bson::Null,
                            "ended_at": Bson::Null,
                        },
                    };
                    self.add_entry(&mut pending, delta, &room, seq, message);
                }
                E::CallJoined(e) => {
                    self.update_message(&mut pending, &e.call_id, seq, |m| {
                        if let Ok(call) = m.get_document_mut("call") {
                            for list in ["participants", "took_part"] {
                                add_to_set(call, list, &e.member_id);
                            }
                            if call.get_array("participants").map_or(0, Vec::len) > 1 {
                                call.insert("status", "ongoing");
                            }
                        }
                    })
                    .await?;
                }
                E::CallLeft(e) => {
                    self.update_message(&mut pending, &e.call_id, seq, |m| {
                        if let Ok(call) = m.get_document_mut("call")
                            && let Ok(list) = call.get_array_mut("participants")
                        {
                            list.retain(|p| p.as_str() != Some(e.member_id.as_str()));
                        }
                    })
                    .await?;
                }
                E::CallEnded(e) => {
                    self.update_message(&mut pending, &e.call_id, seq, |m| {
                        if let Ok(call) = m.get_document_mut("call") {
                            call.insert("status", "ended");
                            call.insert("participants", Bson::Array(Vec::new()));
                            call.insert("duration_ms", e.duration_ms);
                            call.insert("reason", opt(&e.reason));
                            call.insert("ended_at", at);
                        }
                    })
                    .await?;
                }
                E::RoomCreated(e) => {
                    self.rooms
                        .update_one(
                            doc! {"_id": &room},
                            doc! {"$set": {
                                "name": &e.name, "visibility": enum_str(&e.visibility), "topic": opt(&e.topic),
                                "owner_id": &e.owner_id, "created_at": at, "member_count": 0_i64,
                                "last_seq": 0_i64, "last_activity": at,
                            }},
                        )
                        .upsert(true)
                        .await?;
                    self.set_membership(
                        &room,
                        &e.owner_id,
                        doc! {"status": "member", "role": "owner", "joined_at": at},
                    )
                    .await?;
                    membership_status.insert((room.clone(), e.owner_id.clone()), "member".into());
                    delta.membership_changed = true;
                }
                E::RoomUpdated(e) => {
                    self.rooms
                        .update_one(doc! {"_id": &room}, doc! {"$set": {"name": &e.name, "visibility": enum_str(&e.visibility), "topic": opt(&e.topic)}})
                        .await?;
                }
                E::MemberJoined(e) => {
                    self.set_membership(
                        &room,
                        &e.member_id,
                        doc! {"status": "member", "role": enum_str(&e.role), "joined_at": at},
                    )
                    .await?;
                    delta.membership_changed = true;
                    membership_status.insert((room.clone(), e.member_id.clone()), "member".into());
                }
                E::MemberLeft(e) => {
                    self.set_membership(&room, &e.member_id, doc! {"status": "left"})
                        .await?;
                    delta.membership_changed = true;
                    membership_status.insert((room.clone(), e.member_id.clone()), "left".into());
                }
                E::MemberBanned(e) => {
                    self.set_membership(&room, &e.member_id, doc! {"status": "banned"})
                        .await?;
                    delta.membership_changed = true;
                    membership_status.insert((room.clone(), e.member_id.clone()), "banned".into());
                }
                E::MemberInvited(e) => {
                    let was = self
                        .status(&mut membership_status, &room, &e.invitee_id)
                        .await?;
                    if was.as_deref() != Some("member") {
                        self.set_membership(
                            &room,
                            &e.invitee_id,
                            doc! {"status": "invited", "role": "member"},
                        )
                        .await?;
                        membership_status
                            .insert((room.clone(), e.invitee_id.clone()), "invited".into());
                    }
                }
                E::MemberRoleChanged(e) => {
                    self.set_membership(&room, &e.member_id, doc! {"role": enum_str(&e.new_role)})
                        .await?;
                }
                E::MessageEdited(e) => {
                    let edited = self
                        .update_message(&mut pending, &e.message_id, seq, |m| {
                            m.insert("content", &e.content);
                            m.insert("edited_at", at);
                        })
                        .await?;
                    // The words the message now holds find it where it stands in the room
                    // (on a replay too: the postings of the first attempt may not have been
                    // written before it stopped).
                    if let Some((posted, message)) = edited
                        && !message.get_bool("deleted").unwrap_or(false)
                    {
                        let now = text::tokens(message.get_str("content").unwrap_or_default());
                        postings.add(&room, &now, posted, seq);
                    }
                }
                E::MessageDeleted(e) => {
                    // Deleted content leaves the read model: only the tombstone stays, and
                    // its files are no longer shared through it.
                    let mut files = Vec::new();
                    self.update_message(&mut pending, &e.message_id, seq, |m| {
                        files = m
                            .get_array("attachments")
                            .map(|list| {
                                list.iter()
                                    .filter_map(|a| a.as_document()?.get_str("file_id").ok())
                                    .map(str::to_string)
                                    .collect()
                            })
                            .unwrap_or_default();
                        m.insert("deleted", true);
                        m.insert("content", "");
                        for list in ["reactions", "attachments"] {
                            m.insert(list, Bson::Array(Vec::new()));
                        }
                    })
                    .await?;
                    for file in files {
                        self.files
                            .update_one(
                                doc! {"_id": &file},
                                // The whole element: the MongoDB-protocol server here pulls
                                // equal elements, not elements matching a condition.
                                doc! {"$pull": {"shared": {"message_id": &e.message_id, "room_id": &room}}},
                            )
                            .await?;
                    }
                }
                E::ReactionAdded(e) => {
                    self.update_message(&mut pending, &e.message_id, seq, |m| {
                        let reaction =
                            doc! {"user_id": &e.member_id, "emoji": &e.emoji, "timestamp": at};
                        match m.get_array_mut("reactions") {
                            Ok(list) => list.push(reaction.into()),
                            Err(_) => {
                                m.insert("reactions", vec![Bson::Document(reaction)]);
                            }
                        }
                    })
                    .await?;
                }
                E::ReactionRemoved(e) => {
                    self.update_message(&mut pending, &e.message_id, seq, |m| {
                        if let Ok(list) = m.get_array_mut("reactions") {
                            list.retain(|r| {
                                let r = r.as_document();
                                r.and_then(|r| r.get_str("user_id").ok())
                                    != Some(e.member_id.as_str())
                                    || r.and_then(|r| r.get_str("emoji").ok())
                                        != Some(e.emoji.as_str())
                            });
                        }
                    })
                    .await?;
                }
                E::ReadMarkerSet(e) => {
                    self.memberships
                        .update_one(
                            doc! {"_id": membership_id(&room, &e.member_id)},
                            doc! {"$max": {"read_seq": e.read_seq}},
                        )
                        .await?;
                }
                E::AttachmentUploaded(e) => {
                    self.files
                        .update_one(
                            doc! {"_id": &e.file_id},
                            doc! {
                                "$set": {"uploader_id": &e.uploader_id, "filename": &e.filename, "size": e.size, "mime_type": &e.mime_type, "sha256": &e.sha256},
                                "$addToSet": {"rooms": &room},
                            },
                        )
                        .upsert(true)
                        .await?;
                }
                E::UserRegistered(_)
                | E::UserProfileUpdated(_)
                | E::SessionRevoked(_)
                | E::PresenceChanged(_) => {}
            }
        }
        Ok(Folded {
            stats,
            touched,
            pending,
            postings,
        })
    }

    /// Progress per room, exactly once per batch: applied only while the room still stands
    /// where this batch started (a retried batch finds it moved and leaves it).
    async fn advance_rooms(
        &self,
        touched: &BTreeMap<String, RoomDelta>,
    ) -> Result<(), ProjectionError> {
        for (room, delta) in touched {
            let stored = self.rooms.find_one(doc! {"_id": room}).await?;
            if stored.as_ref().and_then(|d| d.get_i64("last_seq").ok()) != Some(delta.before) {
                continue;
            }
            let mut set = doc! {"last_seq": delta.last_seq, "last_event_id": &delta.last_event_id, "last_activity": DateTime::from_millis(delta.last_activity)};
            // Counted, not added up: a batch retried after a crash finds its membership writes
            // already made, so a delta taken from the stored statuses would miss them. (A count
            // may see a later batch's joins a crashed attempt already wrote; that batch recounts.)
            if delta.membership_changed {
                let members = self
                    .memberships
                    .count_documents(doc! {"room_id": room, "status": "member"})
                    .await?;
                set.insert("member_count", members as i64);
            }
            let mut update = doc! {"$set": set, "$inc": {"message_count": delta.messages}};
            if let Some(head) = delta.head {
                update.insert("$max", doc! {"history_head": head});
            }
            self.rooms.update_one(doc! {"_id": room}, update).await?;
        }
        Ok(())
    }

    /// The partitions' checkpoints, written last: a crash before them re-applies the batch.
    ///
    /// Written only where the store still holds the checkpoints this projector last wrote (or
    /// found at open). Commits are a prefix of what was acknowledged, so if those are there,
    /// so is everything written before them. If they are not, the store lost acknowledged
    /// writes (its PostgreSQL restarted without its last asynchronous commits) while this
    /// projector's position ran on: moving the checkpoint would bury the lost events, so the
    /// projector reopens from what the store holds instead (`StoreBehind`).
    async fn store_checkpoints(&self, positions: &Positions) -> Result<(), ProjectionError> {
        let known = self.written.lock().expect("checkpoints").clone();
        let mut by_topic: BTreeMap<Topic, (Document, Document)> = BTreeMap::new();
        for ((topic, partition), next) in positions {
            by_topic
                .entry(*topic)
                .or_default()
                .0
                .insert(format!("next.{partition}"), *next);
        }
        for ((topic, partition), next) in known.iter().flatten() {
            if let Some((_, expected)) = by_topic.get_mut(topic) {
                expected.insert(format!("next.{partition}"), *next);
            }
        }
        for (topic, (mut set, mut expected)) in by_topic {
            set.insert("kind", "offsets");
            set.insert("topic", topic.name());
            let id = format!("offsets:{}", topic.name());
            if expected.is_empty() {
                // Nothing written yet (a fresh store, or a rebuild's first batch).
                self.progress
                    .update_one(doc! {"_id": &id}, doc! {"$set": set})
                    .upsert(true)
                    .await?;
                continue;
            }
            expected.insert("_id", &id);
            let updated = self
                .progress
                .update_one(expected, doc! {"$set": set})
                .await?;
            if updated.matched_count == 0 {
                return Err(ProjectionError::StoreBehind(format!(
                    "the checkpoints of {} are not the ones this projector wrote",
                    topic.name()
                )));
            }
        }
        let mut written = self.written.lock().expect("checkpoints");
        let written = written.get_or_insert_with(Positions::new);
        written.extend(positions.iter().map(|(k, v)| (*k, *v)));
        Ok(())
    }
}

#[derive(Debug, Default)]
struct RoomDelta {
    before: i64,
    last_seq: i64,
    last_event_id: String,
    last_activity: i64,
    /// Whether the batch joined, removed or banned anyone: the room's member count is then
    /// recounted from the memberships.
    membership_changed: bool,
    messages: i64,
    /// The room's newest history bucket after the batch, when the batch posted messages.
    head: Option<i64>,
}

/// Inserts `docs` in slices, unordered: a replay inserts documents that are already there
/// (keyed by message id or posting chunk), which are refused while the rest goes in. Returns
/// the indexes of the refused ones. The checkpoint moves only after every slice went in.
async fn insert_refusing_duplicates(
    collection: &Collection<Document>,
    docs: &[Document],
) -> Result<Vec<usize>, ProjectionError> {
    let mut refused = Vec::new();
    for (n, slice) in docs.chunks(INSERT_SLICE).enumerate() {
        let result = collection
            .insert_many(slice)
            .with_options(InsertManyOptions::builder().ordered(false).build())
            .await;
        match result {
            Ok(_) => {}
            Err(e) if is_duplicate_only(&e) => {
                if let mongodb::error::ErrorKind::InsertMany(failure) = e.kind.as_ref() {
                    let errors = failure.write_errors.iter().flatten();
                    refused.extend(errors.map(|w| n * INSERT_SLICE + w.index));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(refused)
}

/// What a batch writes at its end.
#[derive(Default)]
struct Pending {
    posted: PostedInBatch,
    history: PendingHistory,
}

/// Appends `value` to the string array `list` of `d` unless it holds it already.
fn add_to_set(d: &mut Document, list: &str, value: &str) {
    match d.get_array_mut(list) {
        Ok(items) => {
            if !items.iter().any(|i| i.as_str() == Some(value)) {
                items.push(Bson::String(value.to_string()));
            }
        }
        Err(_) => {
            d.insert(list, vec![Bson::String(value.to_string())]);
        }
    }
}

/// Messages posted in the batch, waiting to be inserted.
#[derive(Default)]
struct PostedInBatch {
    docs: Vec<Document>,
    /// Message id to its place in `docs`.
    index: HashMap<String, usize>,
    /// Places of the messages changed after their post in this batch.
    changed: std::collections::HashSet<usize>,
}

impl PostedInBatch {
    fn push(&mut self, message: Document) {
        let id = message.get_str("_id").unwrap_or_default().to_string();
        self.index.insert(id, self.docs.len());
        self.docs.push(message);
    }
}

/// The batch's search postings, per (room, token, block).
#[derive(Default)]
struct Postings {
    chunks: BTreeMap<(String, String, i64), Chunk>,
}

#[derive(Default)]
struct Chunk {
    seqs: std::collections::BTreeSet<i64>,
    /// What makes the chunk's `_id` unique and the same on a replay of the same events: the
    /// first and last event seq that added to it.
    id: String,
}

impl Postings {
    /// Message `posted` holds `tokens`, as event `event_seq` says (its post or an edit).
    fn add(&mut self, room: &str, tokens: &[String], posted: i64, event_seq: i64) {
        let block = search::block_of(posted);
        for token in tokens {
            let chunk = self
                .chunks
                .entry((room.to_string(), token.clone(), block))
                .or_default();
            chunk.seqs.insert(posted);
            let first = chunk
                .id
                .split_once('-')
                .map_or(event_seq, |(f, _)| f.parse().unwrap_or(event_seq));
            chunk.id = format!("{first}-{event_seq}");
        }
    }
}

/// Bucket fields to set, per (room, bucket number), in bucket order.
#[derive(Default)]
struct PendingHistory {
    buckets: BTreeMap<(String, i64), Document>,
}

impl PendingHistory {
    /// Adds message `seq` of `room` to its bucket; a bucket beyond the room's `head` becomes
    /// the new head, linked both ways to the previous one.
    fn add(&mut self, room: &str, head: &mut i64, seq: i64, message: String) {
        let bucket = history::bucket_of(seq);
        if bucket > *head {
            let fresh = self.fields(room, bucket);
            fresh.insert("prev", *head);
            if *head >= 0 {
                self.fields(room, *head).insert("next", bucket);
            }
            *head = bucket;
        }
        self.fields(room, bucket)
            .insert(history::message_field(seq), message);
    }

    /// The message's bucket copy, as it now stands.
    fn set_message(&mut self, room: &str, seq: i64, message: String) {
        self.fields(room, history::bucket_of(seq))
            .insert(history::message_field(seq), message);
    }

    fn fields(&mut self, room: &str, bucket: i64) -> &mut Document {
        self.buckets.entry((room.to_string(), bucket)).or_default()
    }
}

fn opt(value: &Option<String>) -> Bson {
    value.clone().map(Bson::String).unwrap_or(Bson::Null)
}

fn is_duplicate_only(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::InsertMany(failure) => {
            failure.write_concern_error.is_none()
                && failure
                    .write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|w| w.code == 11000))
        }
        _ => false,
    }
}

/// What a batch's events make: written by `apply` in three steps.
struct Folded {
    stats: Counts,
    /// Per room: seq before the batch (the guard), and what the batch changes on the room doc.
    touched: BTreeMap<String, RoomDelta>,
    pending: Pending,
    postings: Postings,
}

impl Project for MongoProjector {
    fn name(&self) -> &'static str {
        "mongo"
    }

    async fn checkpoints(&self) -> Result<Positions, ProjectionError> {
        let mut positions = Positions::new();
        let mut cursor = self.progress.find(doc! {"kind": "offsets"}).await?;
        while let Some(d) = cursor.try_next().await? {
            let (Ok(topic), Ok(next)) = (d.get_str("topic"), d.get_document("next")) else {
                continue;
            };
            let Some(topic) = Topic::from_name(topic) else {
                continue;
            };
            for (partition, offset) in next {
                if let (Ok(partition), Some(offset)) = (partition.parse::<i32>(), offset.as_i64()) {
                    positions.insert((topic, partition), offset);
                }
            }
        }
        *self.written.lock().expect("checkpoints") = Some(positions.clone());
        Ok(positions)
    }

    async fn apply(
        &mut self,
        batch: &Batch,
        dead_letter: &DeadLetter,
    ) -> Result<Counts, ProjectionError> {
        self.restore_cursors(batch).await?;
        let Folded {
            stats,
            touched,
            pending,
            postings,
        } = self.fold(batch, dead_letter).await?;
        // Independent writes, all done before the rooms' progress moves: at once, so FerretDB
        // and PostgreSQL work on them side by side.
        let posting_docs = self.posting_docs(postings);
        tokio::try_join!(
            self.flush_posted(pending.posted),
            self.flush_history(pending.history),
            insert_refusing_duplicates(&self.search, &posting_docs),
        )?;
        self.advance_rooms(&touched).await?;
        self.store_checkpoints(&batch.positions).await?;
        Ok(stats)
    }

    fn reset(&mut self) {
        self.gate.clear();
        self.heads.clear();
        self.seen_blocks.clear();
    }

    async fn is_live(&self) -> Result<bool, ProjectionError> {
        match &self.pointer {
            Some(base) => {
                Ok(read_model::live::mongo_live(self.db.client(), base).await? == self.db.name())
            }
            None => Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_buckets_link_both_ways_and_move_the_head() {
        let mut pending = PendingHistory::default();
        let mut head = 3;
        pending.add("r", &mut head, 3 * 128 + 5, "a".into());
        assert_eq!(head, 3, "a message in the head bucket adds no link");
        pending.add("r", &mut head, 7 * 128, "b".into());
        pending.add("r", &mut head, 7 * 128 + 1, "c".into());
        assert_eq!(head, 7);
        let old = &pending.buckets[&("r".to_string(), 3)];
        assert_eq!(old.get_i64("next").unwrap(), 7);
        assert!(!old.contains_key("prev"));
        let new = &pending.buckets[&("r".to_string(), 7)];
        assert_eq!(new.get_i64("prev").unwrap(), 3);
        assert_eq!(
            new.keys().filter(|k| k.starts_with("m.")).count(),
            2,
            "{new:?}"
        );
        // A room's first bucket has no predecessor.
        let mut fresh = -1;
        pending.add("s", &mut fresh, 10, "d".into());
        assert_eq!(
            pending.buckets[&("s".to_string(), 0)]
                .get_i64("prev")
                .unwrap(),
            -1
        );
    }

    #[test]
    fn chunks_are_named_by_the_events_that_filled_them() {
        let mut postings = Postings::default();
        let tokens = ["hello".to_string(), "world".to_string()];
        postings.add("r", &tokens, 10, 10);
        postings.add("r", &tokens[..1], 12, 12);
        // An edit of message 11 adds its new word where the message stands.
        postings.add("r", &tokens[1..], 11, 40);
        let hello = &postings.chunks[&("r".to_string(), "hello".to_string(), 0)];
        assert_eq!(hello.id, "10-12");
        assert_eq!(hello.seqs.iter().copied().collect::<Vec<_>>(), [10, 12]);
        let world = &postings.chunks[&("r".to_string(), "world".to_string(), 0)];
        assert_eq!(world.id, "10-40");
        assert_eq!(world.seqs.iter().copied().collect::<Vec<_>>(), [10, 11]);
    }
}
