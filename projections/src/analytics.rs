//! The ClickHouse read model for analysts: one wide `events` table (a row per event) and
//! materialized views for messages per room per minute, daily active users and call minutes.
//!
//! Every statement runs on ClickHouse 18.16 (what the local stack installs) and on current
//! releases: `DateTime` plus a millisecond `UInt64` instead of `DateTime64`, `String` instead of
//! `LowCardinality`, materialized views writing `TO` plain Summing/Replacing MergeTree tables.
//!
//! Exactly once: the table itself is the checkpoint. Each batch is inserted in one INSERT per
//! month partition, earliest first, and rows carry their topic, partition and offset; on start
//! the projector resumes each partition after the highest offset stored. A crash before an
//! insert completes loses the whole insert (ClickHouse parts are atomic), so nothing is applied
//! twice and nothing skipped.
//!
//! The views are not atomic with the table: ClickHouse writes an insert's part of `events`,
//! then pushes the block to each view, so a ClickHouse killed in between keeps the rows and
//! loses their view rows (the chaos test found 3 posts missing from `messages_per_room_minute`
//! so). Only the last insert can be cut that way, and its rows are the newest of their
//! partitions: whenever the projector (re)loads its state from the table (at open and after
//! any failed insert) it compares the views with `events` over the keys those newest rows
//! touch and inserts what is missing ([`AnalyticsProjector::mend_views`]).

use std::collections::BTreeMap;

use clickhouse::Client;
use schemas::DomainEvent;
use schemas::topics::Topic;
use serde::{Deserialize, Serialize};

use crate::deadletter::DeadLetter;
use crate::error::ProjectionError;
use crate::gate::{Admission, Gate, RoomCursor};
use crate::runner::{Counts, Project};
use crate::source::{Batch, Positions};

/// One row of `events`.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize, PartialEq)]
pub struct EventRow {
    pub event_id: String,
    pub kind: String,
    pub topic: String,
    pub partition: u16,
    pub offset: u64,
    pub room_id: String,
    /// The user the event is about: the author of a message, the member who joined, the user
    /// of a user or presence event.
    pub user_id: String,
    pub actor_id: String,
    pub seq: i64,
    /// Seconds (DateTime) and milliseconds of `occurred_at`.
    pub occurred_at: u32,
    pub occurred_at_ms: u64,
    pub message_id: String,
    /// Characters of the message content (posted or edited).
    pub content_length: u32,
    pub attachment_count: u16,
    pub attachment_bytes: u64,
    pub call_id: String,
    pub duration_ms: u64,
    pub emoji: String,
    /// Size of the Avro record on the log.
    pub payload_bytes: u32,
}

/// The tables, in creation order; `{db}` is replaced by the database.
pub const SCHEMA: &[&str] = &[
    "CREATE DATABASE IF NOT EXISTS {db}",
    "CREATE TABLE IF NOT EXISTS {db}.events (
        event_id String, kind String, topic String, partition UInt16, offset UInt64,
        room_id String, user_id String, actor_id String, seq Int64,
        occurred_at DateTime, occurred_at_ms UInt64, date Date DEFAULT toDate(occurred_at),
        message_id String, content_length UInt32, attachment_count UInt16, attachment_bytes UInt64,
        call_id String, duration_ms UInt64, emoji String, payload_bytes UInt32
    ) ENGINE = MergeTree PARTITION BY toYYYYMM(occurred_at) ORDER BY (kind, room_id, occurred_at, seq)",
    "CREATE TABLE IF NOT EXISTS {db}.messages_per_room_minute (
        room_id String, minute DateTime, messages UInt64, characters UInt64
    ) ENGINE = SummingMergeTree PARTITION BY toYYYYMM(minute) ORDER BY (room_id, minute)",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_messages_per_room_minute TO {db}.messages_per_room_minute AS
        SELECT room_id, toStartOfMinute(occurred_at) AS minute, count() AS messages, sum(content_length) AS characters
        FROM {db}.events WHERE kind = 'message_posted' GROUP BY room_id, minute",
    "CREATE TABLE IF NOT EXISTS {db}.daily_active_users (
        date Date, user_id String
    ) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(date) ORDER BY (date, user_id)",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_daily_active_users TO {db}.daily_active_users AS
        SELECT toDate(occurred_at) AS date, actor_id AS user_id
        FROM {db}.events WHERE actor_id != '' AND topic = 'chat.room-events'",
    "CREATE TABLE IF NOT EXISTS {db}.call_minutes (
        room_id String, date Date, calls UInt64, duration_ms UInt64
    ) ENGINE = SummingMergeTree PARTITION BY toYYYYMM(date) ORDER BY (room_id, date)",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_call_minutes TO {db}.call_minutes AS
        SELECT room_id, toDate(occurred_at) AS date, count() AS calls, sum(duration_ms) AS duration_ms
        FROM {db}.events WHERE kind = 'call_ended' GROUP BY room_id, date",
];

pub fn client(url: &str) -> Client {
    Client::default().with_url(url).with_validation(false)
}

fn ch(e: clickhouse::error::Error) -> ProjectionError {
    ProjectionError::ClickHouse(e.to_string())
}

pub async fn ensure_schema(client: &Client, db: &str) -> Result<(), ProjectionError> {
    for statement in SCHEMA {
        client
            .query(&statement.replace("{db}", db))
            .execute()
            .await
            .map_err(ch)?;
    }
    Ok(())
}

pub struct AnalyticsProjector {
    client: Client,
    db: String,
    gate: Gate,
    gate_loaded: bool,
    /// The stable database whose live generation this projector follows (`crate::live`).
    pointer: Option<String>,
    /// Offsets back from each partition's newest row that one batch can span (records plus
    /// transaction markers): the rows a cut insert can have left without their view rows.
    recent_offsets: u64,
    /// Whether the views were mended since the last failed insert.
    mended: bool,
}

/// Records per batch assumed until [`AnalyticsProjector::with_batch`] says otherwise (the
/// projector's default, `CHAT_PROJECTION_BATCH`).
const DEFAULT_BATCH: usize = 500;

/// The view rows a cut insert left out, for a view that counts and sums one kind of event per
/// room and period: per key the totals of `events` less what the view holds. `{recent}` selects
/// the newest rows (see `recent_filter`), `{db}` the database.
fn mend_sums(
    table: &str,
    period: &str,
    period_of: &str,
    kind: &str,
    (count, sum, summed): (&str, &str, &str),
) -> String {
    let touched = format!(
        "SELECT room_id, {period_of} FROM {{db}}.events WHERE kind = '{kind}' AND ({{recent}})"
    );
    format!(
        "INSERT INTO {{db}}.{table} (room_id, {period}, {count}, {sum})
         SELECT room_id, {period}, toUInt64(e_count - v_count),
                toUInt64(if(e_sum > v_sum, e_sum - v_sum, 0))
         FROM (
            SELECT room_id, {period_of} AS {period}, count() AS e_count, sum({summed}) AS e_sum
            FROM {{db}}.events
            WHERE kind = '{kind}' AND (room_id, {period_of}) IN ({touched})
            GROUP BY room_id, {period}
         ) ANY LEFT JOIN (
            SELECT room_id, {period}, sum({count}) AS v_count, sum({sum}) AS v_sum
            FROM {{db}}.{table}
            WHERE (room_id, {period}) IN ({touched})
            GROUP BY room_id, {period}
         ) USING (room_id, {period})
         WHERE e_count > v_count"
    )
}

/// Every view's mending statement (see `AnalyticsProjector::mend_views`).
fn mend_statements() -> Vec<String> {
    vec![
        mend_sums(
            "messages_per_room_minute",
            "minute",
            "toStartOfMinute(occurred_at)",
            "message_posted",
            ("messages", "characters", "content_length"),
        ),
        mend_sums(
            "call_minutes",
            "date",
            "toDate(occurred_at)",
            "call_ended",
            ("calls", "duration_ms", "duration_ms"),
        ),
        // A set, not a sum: the (date, user) pairs of the newest rows the view lacks.
        "INSERT INTO {db}.daily_active_users (date, user_id)
         SELECT DISTINCT toDate(occurred_at) AS date, actor_id AS user_id
         FROM {db}.events
         WHERE actor_id != '' AND ({recent}) AND (toDate(occurred_at), actor_id) NOT IN (
            SELECT date, user_id FROM {db}.daily_active_users
            WHERE date IN (SELECT toDate(occurred_at) FROM {db}.events WHERE {recent}))"
            .to_string(),
    ]
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Position {
    topic: String,
    partition: u16,
    offset: u64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct RoomHead {
    room_id: String,
    seq: i64,
    event_id: String,
}

impl AnalyticsProjector {
    pub async fn open(client: Client, db: &str) -> Result<Self, ProjectionError> {
        ensure_schema(&client, db).await?;
        Ok(Self {
            client,
            db: db.to_string(),
            gate: Gate::default(),
            gate_loaded: false,
            pointer: None,
            recent_offsets: 2 * DEFAULT_BATCH as u64,
            mended: false,
        })
    }

    /// Batches hold at most `max_batch` records: how far back a cut insert can reach.
    pub fn with_batch(mut self, max_batch: usize) -> Self {
        self.recent_offsets = 2 * max_batch.max(1) as u64;
        self
    }

    /// Opens the live generation behind the stable database `db` and follows it, first
    /// mending its views after a crash (batches of at most `max_batch` records).
    pub async fn open_live(
        client: Client,
        db: &str,
        max_batch: usize,
    ) -> Result<Self, ProjectionError> {
        let live = crate::live::clickhouse_live(&client, db).await?;
        let mut projector = Self::open(client, &live).await?.with_batch(max_batch);
        projector.pointer = Some(db.to_string());
        projector.mend_views().await?;
        projector.mended = true;
        Ok(projector)
    }

    /// For a model built from a point in time: each room starts at its first event read.
    pub fn from_point_in_time(mut self) -> Self {
        self.gate = Gate::adopting();
        self
    }

    /// The database this projector writes (a generation).
    pub fn database(&self) -> &str {
        &self.db
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn topics() -> Vec<Topic> {
        vec![Topic::RoomEvents, Topic::UserEvents, Topic::PresenceEvents]
    }

    async fn load_gate(&mut self) -> Result<(), ProjectionError> {
        if self.gate_loaded {
            return Ok(());
        }
        let heads: Vec<RoomHead> = self
            .client
            .query(&format!(
                // Aliases differ from the columns: ClickHouse would read `seq` in argMax as max(seq).
                "SELECT room_id, max(seq) AS head_seq, argMax(event_id, seq) AS head_event FROM {}.events \
                 WHERE topic = 'chat.room-events' GROUP BY room_id",
                self.db
            ))
            .fetch_all()
            .await
            .map_err(ch)?;
        for head in heads {
            self.gate.restore(
                &head.room_id,
                RoomCursor::restored(head.seq, Some(head.event_id)),
            );
        }
        if !self.mended {
            self.mend_views().await?;
            self.mended = true;
        }
        self.gate_loaded = true;
        Ok(())
    }

    /// Gives the views what the last insert before a crash or a failed insert may have left
    /// out of them (see the module's doc). Every view reads only `chat.room-events` rows with
    /// keys; a key the newest rows touch is compared whole, so a view row already there is
    /// never counted twice.
    pub async fn mend_views(&self) -> Result<(), ProjectionError> {
        let Some(recent) = self.recent_filter().await? else {
            return Ok(());
        };
        for statement in mend_statements() {
            self.client
                .query(
                    &statement
                        .replace("{db}", &self.db)
                        .replace("{recent}", &recent),
                )
                .execute()
                .await
                .map_err(ch)?;
        }
        Ok(())
    }

    /// `topic = 'chat.room-events' AND (partition = p AND offset > newest - window OR ...)`,
    /// or None when the table has no room event.
    async fn recent_filter(&self) -> Result<Option<String>, ProjectionError> {
        let room_events = Topic::RoomEvents.name();
        let newest: Vec<(i32, i64)> = self
            .checkpoints()
            .await?
            .into_iter()
            .filter(|((topic, _), _)| topic.name() == room_events)
            .map(|((_, partition), next)| (partition, next - 1))
            .collect();
        if newest.is_empty() {
            return Ok(None);
        }
        let window = self.recent_offsets as i64;
        let partitions: Vec<String> = newest
            .iter()
            .map(|(partition, last)| match last - window {
                from if from >= 0 => format!("(partition = {partition} AND offset > {from})"),
                _ => format!("partition = {partition}"),
            })
            .collect();
        Ok(Some(format!(
            "topic = '{room_events}' AND ({})",
            partitions.join(" OR ")
        )))
    }
}

impl Project for AnalyticsProjector {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    async fn checkpoints(&self) -> Result<Positions, ProjectionError> {
        let rows: Vec<Position> = self
            .client
            .query(&format!("SELECT topic, partition, max(offset) AS last_offset FROM {}.events GROUP BY topic, partition", self.db))
            .fetch_all()
            .await
            .map_err(ch)?;
        Ok(rows
            .into_iter()
            .filter_map(|p| {
                Some((
                    (Topic::from_name(&p.topic)?, i32::from(p.partition)),
                    p.offset as i64 + 1,
                ))
            })
            .collect())
    }

    async fn apply(
        &mut self,
        batch: &Batch,
        dead_letter: &DeadLetter,
    ) -> Result<Counts, ProjectionError> {
        self.load_gate().await?;
        let mut counts = Counts::default();
        // Month partition -> rows, so each INSERT lands in one part.
        let mut months: BTreeMap<u32, Vec<EventRow>> = BTreeMap::new();
        for record in &batch.records {
            if let Admission::Skip = self.gate.sort(record, dead_letter, &mut counts).await? {
                continue;
            }
            counts.applied += 1;
            let row = to_row(
                record.topic,
                record.partition,
                record.offset,
                record.payload.len(),
                &record.event,
            );
            months
                .entry(month_of(row.occurred_at))
                .or_default()
                .push(row);
        }
        for rows in months.values() {
            // The table name is escaped as one identifier: the database goes on the client.
            let mut insert = self
                .client
                .clone()
                .with_database(&self.db)
                .insert::<EventRow>("events")
                .await
                .map_err(ch)?;
            for row in rows {
                insert.write(row).await.map_err(ch)?;
            }
            insert.end().await.map_err(ch)?;
        }
        Ok(counts)
    }

    fn reset(&mut self) {
        self.gate.clear();
        self.gate_loaded = false;
        self.mended = false;
    }

    async fn is_live(&self) -> Result<bool, ProjectionError> {
        match &self.pointer {
            Some(db) => Ok(crate::live::clickhouse_current(&self.client, db)
                .await?
                .as_deref()
                == Some(self.db.as_str())),
            None => Ok(true),
        }
    }
}

/// `YYYYMM` of a Unix time in seconds (UTC), the table's partition key.
fn month_of(secs: u32) -> u32 {
    // A u32 of seconds is always a valid instant.
    let date = time::OffsetDateTime::from_unix_timestamp(i64::from(secs))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    date.year() as u32 * 100 + u32::from(u8::from(date.month()))
}

pub fn to_row(
    topic: Topic,
    partition: i32,
    offset: i64,
    payload_bytes: usize,
    event: &DomainEvent,
) -> EventRow {
    let envelope = event.envelope();
    let mut row = EventRow {
        event_id: envelope.event_id.clone(),
        kind: event.kind().as_str().to_string(),
        topic: topic.name().to_string(),
        partition: partition as u16,
        offset: offset as u64,
        room_id: envelope.room_id.clone().unwrap_or_default(),
        user_id: envelope.user_id.clone().unwrap_or_default(),
        actor_id: envelope.actor_id.clone().unwrap_or_default(),
        seq: envelope.seq.unwrap_or(0),
        occurred_at: (envelope.occurred_at / 1000).max(0) as u32,
        occurred_at_ms: envelope.occurred_at.max(0) as u64,
        message_id: String::new(),
        content_length: 0,
        attachment_count: 0,
        attachment_bytes: 0,
        call_id: String::new(),
        duration_ms: 0,
        emoji: String::new(),
        payload_bytes: payload_bytes as u32,
    };
    use DomainEvent as E;
    match event {
        E::RoomCreated(e) => row.user_id = e.owner_id.clone(),
        E::MemberJoined(e) => row.user_id = e.member_id.clone(),
        E::MemberLeft(e) => row.user_id = e.member_id.clone(),
        E::MemberBanned(e) => row.user_id = e.member_id.clone(),
        E::MemberInvited(e) => row.user_id = e.invitee_id.clone(),
        E::MemberRoleChanged(e) => row.user_id = e.member_id.clone(),
        E::MessagePosted(e) => {
            row.user_id = e.author_id.clone();
            row.message_id = e.message_id.clone();
            row.content_length = e.content.chars().count() as u32;
            row.attachment_count = e.attachments.len() as u16;
            row.attachment_bytes = e.attachments.iter().map(|a| a.size.max(0) as u64).sum();
        }
        E::MessageEdited(e) => {
            row.message_id = e.message_id.clone();
            row.content_length = e.content.chars().count() as u32;
        }
        E::MessageDeleted(e) => row.message_id = e.message_id.clone(),
        E::ReactionAdded(e) => {
            row.message_id = e.message_id.clone();
            row.user_id = e.member_id.clone();
            row.emoji = e.emoji.clone();
        }
        E::ReactionRemoved(e) => {
            row.message_id = e.message_id.clone();
            row.user_id = e.member_id.clone();
            row.emoji = e.emoji.clone();
        }
        E::ReadMarkerSet(e) => row.user_id = e.member_id.clone(),
        E::AttachmentUploaded(e) => {
            row.user_id = e.uploader_id.clone();
            row.attachment_count = 1;
            row.attachment_bytes = e.size.max(0) as u64;
        }
        E::CallStarted(e) => {
            row.call_id = e.call_id.clone();
            row.user_id = e.initiator_id.clone();
        }
        E::CallJoined(e) => {
            row.call_id = e.call_id.clone();
            row.user_id = e.member_id.clone();
        }
        E::CallLeft(e) => {
            row.call_id = e.call_id.clone();
            row.user_id = e.member_id.clone();
        }
        E::CallEnded(e) => {
            row.call_id = e.call_id.clone();
            row.duration_ms = e.duration_ms.max(0) as u64;
        }
        E::RoomUpdated(_)
        | E::UserRegistered(_)
        | E::UserProfileUpdated(_)
        | E::SessionRevoked(_)
        | E::PresenceChanged(_) => {}
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_of_unix_times() {
        assert_eq!(month_of(0), 197001);
        assert_eq!(month_of(951_782_400), 200002); // 2000-02-29
        assert_eq!(month_of(1_798_761_599), 202612); // 2026-12-31 23:59:59
        assert_eq!(month_of(1_798_761_600), 202701);
    }
}
