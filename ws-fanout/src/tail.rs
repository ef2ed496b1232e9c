//! The node's tail of `chat.room-events`: the partitions its rooms live in (`crate::interest`),
//! no consumer group commits (each node keeps its own place), decoded once and handed to the
//! hub in log order.
//!
//! Where a partition starts when the node begins to read it: the presence projector's
//! checkpoint (its Redis snapshot holds each room's last seq as of that checkpoint), minus
//! `warm_records` so resumes right after a node start still find their gap. Any start at or
//! before the snapshot is correct: a room the tail has not shown yet has had no event since, so
//! the snapshot's seq is its head (see `heads.rs`).
//!
//! The assignment changes only between records, in the tail's own task, and each partition
//! kept is assigned again at exactly the next offset the hub has not been handed; librdkafka
//! discards what it had fetched under the previous assignment (its fetch ops carry a version).

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::IntCounter;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::{DomainEvent, EventCodec};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::FanoutError;
use crate::heads::Heads;
use crate::hub::{Fact, Hub, Standing};
use crate::interest::{Interest, LogCommand};
use crate::line::{Frame, Origin};
use crate::metrics::Metrics;
use crate::protocol;
use schemas::events::Visibility;

const ROOM_EVENTS: &str = schemas::topics::ROOM_EVENTS;

/// Partition count of the room topic (retried while the broker starts).
pub async fn partition_count(brokers: &str) -> Result<i32, FanoutError> {
    let brokers = brokers.to_string();
    tokio::task::spawn_blocking(move || -> Result<i32, FanoutError> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))?;
        let n = schemas::kafka::partition_count(&client, ROOM_EVENTS, Duration::from_secs(10))
            .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))?;
        if n == 0 {
            return Err(FanoutError::Unavailable(format!(
                "topic {ROOM_EVENTS} does not exist"
            )));
        }
        Ok(n)
    })
    .await
    .map_err(|e| FanoutError::Internal(e.to_string()))?
}

/// Where the tail starts in one partition, and where the log ended when it started.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub offset: i64,
    /// The high watermark at start: the node is ready once its tail passed it.
    pub end: i64,
}

/// Where a partition's reading starts: `checkpoint - warm`, never before the log's first record.
pub fn start_of(checkpoint: i64, (low, high): (i64, i64), warm: i64) -> Start {
    if checkpoint > high {
        // The read models belong to a log that was since replaced (a wiped broker): their
        // snapshot cannot place rooms, so read this log from its start.
        tracing::warn!(
            checkpoint,
            high,
            "projector checkpoint beyond the log's end"
        );
    }
    let offset = if checkpoint > high {
        low
    } else {
        (checkpoint - warm).max(low)
    };
    Start {
        offset: offset.max(0),
        end: high,
    }
}

/// Reads the room topic's watermarks: the start position and the tail's lag.
#[derive(Clone)]
pub struct Watermarks {
    client: Arc<BaseConsumer>,
}

impl Watermarks {
    /// High watermarks: everything acknowledged so far, which the tail reaches once the
    /// transactions open at that moment resolved (`schemas::kafka::watermark_config`).
    pub fn new(brokers: &str) -> Result<Self, FanoutError> {
        let client: BaseConsumer = schemas::kafka::watermark_config(brokers)
            .create()
            .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))?;
        Ok(Self {
            client: Arc::new(client),
        })
    }

    /// `(low, high)` of each of `partitions`.
    pub async fn fetch(&self, partitions: Vec<i32>) -> Result<Vec<(i64, i64)>, FanoutError> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || {
            partitions
                .into_iter()
                .map(|p| {
                    client
                        .fetch_watermarks(ROOM_EVENTS, p, Duration::from_secs(10))
                        .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))
                })
                .collect()
        })
        .await
        .map_err(|e| FanoutError::Internal(e.to_string()))?
    }

    /// The high watermark (next offset) of one partition.
    pub async fn high(&self, partition: i32) -> Result<i64, FanoutError> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || {
            client
                .fetch_watermarks(ROOM_EVENTS, partition, Duration::from_secs(5))
                .map(|(_, high)| high)
                .map_err(|e| FanoutError::Unavailable(format!("broker: {e}")))
        })
        .await
        .map_err(|e| FanoutError::Internal(e.to_string()))?
    }

    /// Keeps the `ws_tail_lag_records` gauge current: records in the log the tail has not
    /// handed to the hub yet, over the partitions it reads.
    pub async fn watch_lag(self, hub: Arc<Hub>, metrics: Metrics, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let read: Vec<i32> = (0..hub.partitions() as i32)
                .filter(|p| hub.position(*p as usize) >= 0)
                .collect();
            if let Ok(ends) = self.fetch(read.clone()).await {
                let lag: i64 = read
                    .iter()
                    .zip(ends)
                    .map(|(p, (_, high))| (high - hub.position(*p as usize)).max(0))
                    .sum();
                metrics.tail_lag.set(lag);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}

pub struct Tail {
    consumer: StreamConsumer<schemas::kafka::ReaderContext>,
    codec: Arc<EventCodec>,
    hub: Arc<Hub>,
    heads: Heads,
    watermarks: Watermarks,
    interest: Arc<Interest>,
    warm: i64,
    /// Partitions assigned, and partitions wanted whose start could not be found yet.
    reading: BTreeSet<i32>,
    starting: BTreeSet<i32>,
    /// `ws_log_records_total{partition}` per partition, resolved at its first record (a label
    /// lookup and a string per record otherwise; unread partitions show no series).
    records: Vec<OnceLock<IntCounter>>,
}

/// How often a partition whose start could not be found (Redis or the broker did not answer)
/// is tried again.
const START_RETRY: Duration = Duration::from_millis(500);

impl Tail {
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        brokers: &str,
        fetch_wait_ms: u32,
        warm: i64,
        codec: Arc<EventCodec>,
        hub: Arc<Hub>,
        heads: Heads,
        watermarks: Watermarks,
        interest: Arc<Interest>,
    ) -> Result<Self, FanoutError> {
        let broker =
            |e: rdkafka::error::KafkaError| FanoutError::Unavailable(format!("broker: {e}"));
        // A group id is required by the client; nothing is ever committed under it.
        let consumer: StreamConsumer<schemas::kafka::ReaderContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("chat-fanout-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
            // Should a start offset ever be out of range, missing records is the one wrong answer.
            .set("auto.offset.reset", "earliest")
            .set("queued.max.messages.kbytes", "16384")
            .set("isolation.level", "read_committed")
            // End-of-partition moves the position past the commit markers that end the room
            // log, so the node counts as caught up (`Hub::set_target`) at the high watermark.
            .set("enable.partition.eof", "true")
            .create_with_context(schemas::kafka::ReaderContext)
            .map_err(broker)?;
        Ok(Self {
            consumer,
            codec,
            heads,
            watermarks,
            interest,
            warm,
            reading: BTreeSet::new(),
            starting: BTreeSet::new(),
            records: (0..hub.partitions()).map(|_| OnceLock::new()).collect(),
            hub,
        })
    }

    /// Reads until `stop`; every record is offered to its room before its offset counts as
    /// read. Between records it follows `commands` (which partitions to read).
    pub async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<LogCommand>,
        stop: CancellationToken,
        metrics: Metrics,
    ) {
        let mut retry = tokio::time::interval(START_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    let mut batch = vec![command];
                    while let Ok(more) = commands.try_recv() {
                        batch.push(more);
                    }
                    self.follow(batch, &metrics).await;
                }
                _ = retry.tick(), if !self.starting.is_empty() => {
                    if self.start(&metrics).await {
                        self.assign();
                    }
                }
                message = self.consumer.recv() => {
                    if !self.record(message, &stop, &metrics).await {
                        return;
                    }
                }
            }
        }
    }

    /// Applies the interest's commands: partitions to start reading, partitions to let go.
    async fn follow(&mut self, batch: Vec<LogCommand>, metrics: &Metrics) {
        let mut changed = false;
        for command in batch {
            match command {
                LogCommand::Read(p) => {
                    if !self.reading.contains(&p) {
                        self.starting.insert(p);
                    }
                }
                LogCommand::Release(p) => {
                    let interest = self.interest.clone();
                    interest.release_if_unwanted(p, || {
                        self.starting.remove(&p);
                        changed |= self.reading.remove(&p);
                        self.hub.forget_partition(p);
                    });
                }
            }
        }
        changed |= self.start(metrics).await;
        if changed {
            self.assign();
        }
    }

    /// Finds where each partition in `starting` begins; true when some did.
    async fn start(&mut self, metrics: &Metrics) -> bool {
        if self.starting.is_empty() {
            return false;
        }
        let partitions: Vec<i32> = self.starting.iter().copied().collect();
        let found = async {
            let checkpoints = self.heads.checkpoints().await?;
            let ends = self.watermarks.fetch(partitions.clone()).await?;
            Ok::<_, FanoutError>((checkpoints, ends))
        };
        let (checkpoints, ends) = match found.await {
            Ok(found) => found,
            Err(e) => {
                metrics.interest_retries.inc();
                tracing::warn!(error = %e, ?partitions, "cannot find where to start reading; trying again");
                return false;
            }
        };
        for (p, ends) in partitions.iter().zip(ends) {
            let checkpoint = checkpoints.get(*p as usize).copied().unwrap_or(0);
            let start = start_of(checkpoint, ends, self.warm);
            tracing::info!(partition = p, ?start, "reading a partition of the room log");
            self.hub.set_position(*p as usize, start.offset);
            self.hub.set_target(*p as usize, start.end);
            self.reading.insert(*p);
        }
        self.starting.clear();
        true
    }

    /// Assigns the partitions read, each at the next offset the hub has not been handed.
    fn assign(&self) {
        let mut assignment = TopicPartitionList::new();
        for p in &self.reading {
            let next = self.hub.position(*p as usize);
            if let Err(e) = assignment.add_partition_offset(ROOM_EVENTS, *p, Offset::Offset(next)) {
                tracing::error!(error = %e, partition = p, "cannot build the assignment");
            }
        }
        if let Err(e) = self.consumer.assign(&assignment) {
            // Local to the client (no broker round trip): only a bug gets here.
            tracing::error!(error = %e, "cannot change the tail's assignment");
        }
    }

    /// Hands one record (or an end of partition) to the hub; false when stopping.
    async fn record(
        &self,
        message: Result<BorrowedMessage<'_>, KafkaError>,
        stop: &CancellationToken,
        metrics: &Metrics,
    ) -> bool {
        let message = match message {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(_)) => {
                for (_, partition, next) in schemas::kafka::positions(&self.consumer) {
                    if self.reading.contains(&partition)
                        && next > self.hub.position(partition as usize)
                    {
                        self.hub.set_position(partition as usize, next);
                    }
                }
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "log tail: consumer error; waiting for the broker");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return true;
            }
        };
        if !self.reading.contains(&message.partition()) {
            return true;
        }
        let partition = message.partition() as usize;
        let next = message.offset() + 1;
        match message.payload() {
            Some(payload) => {
                // A registry that does not answer is waited for (the room's stream would
                // stop at the gap otherwise); a record it cannot decode is skipped.
                let decoded = tokio::select! {
                    _ = stop.cancelled() => return false,
                    decoded = platform::retry::while_transient(
                        "registry",
                        || self.codec.decode(payload),
                        schemas::SchemaError::is_transient,
                    ) => decoded,
                };
                match decoded {
                    Ok(event) => {
                        if let Some(counter) = self.records.get(partition) {
                            counter
                                .get_or_init(|| {
                                    metrics
                                        .log_records
                                        .with_label_values(&[&partition.to_string()])
                                })
                                .inc();
                        }
                        self.deliver(&event, metrics);
                    }
                    Err(e) => {
                        // The projectors dead-letter it; a socket cannot be shown it either way.
                        metrics.undecodable.inc();
                        tracing::warn!(partition, offset = message.offset(), error = %e, "undecodable record skipped");
                    }
                }
            }
            None => metrics.undecodable.inc(),
        }
        self.hub.set_position(partition, next);
        true
    }

    fn deliver(&self, event: &DomainEvent, metrics: &Metrics) {
        let envelope = event.envelope();
        let (Some(room), Some(seq)) = (envelope.room_id.as_deref(), envelope.seq) else {
            return;
        };
        let frame = Frame::from(protocol::event_frame(room, seq, event));
        let pushed = self.hub.offer(room, seq, frame, Origin::Log, fact(event));
        metrics.delivered(envelope.occurred_at, pushed);
    }
}

/// What an event says about who may read its room, for the hub (log records and fast copies
/// alike: both are acknowledged events, and the seq decides between them, so a node learns of
/// a join or a ban as soon as the first copy arrives).
pub fn fact(event: &DomainEvent) -> Option<Fact> {
    let standing = |user: &str, standing| {
        Some(Fact::Standing {
            user: user.to_string(),
            standing,
        })
    };
    match event {
        DomainEvent::RoomCreated(e) => Some(Fact::Created {
            owner: e.owner_id.clone(),
            public: e.visibility == Visibility::Public,
        }),
        DomainEvent::RoomUpdated(e) => Some(Fact::Visibility {
            public: e.visibility == Visibility::Public,
        }),
        DomainEvent::MemberJoined(e) => standing(&e.member_id, Standing::Member),
        DomainEvent::MemberLeft(e) => standing(&e.member_id, Standing::Left),
        DomainEvent::MemberBanned(e) => standing(&e.member_id, Standing::Banned),
        _ => None,
    }
}
