//! Follows `chat.room-events` into the call state (`crate::calls`), and
//! `chat.presence-events` for participants whose sockets all dropped (`crate::drops`).
//!
//! One consumer group for all signaling instances: each reads its share of the partitions and
//! applies the call events in them. An offset is stored only after its record was applied
//! (and committed with the next auto-commit), so a restart reads again from at most a second
//! back, and the per-call seq guard makes applying a record twice change nothing. A store that
//! does not answer is retried with backoff (counted), never skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use schemas::events::PresenceStatus;
use schemas::{DomainEvent, EventCodec};
use tokio_util::sync::CancellationToken;

use crate::calls::Calls;
use crate::drops::Dropper;
use crate::metrics::Metrics;

pub struct Follower {
    pub brokers: String,
    pub group: String,
    pub codec: Arc<EventCodec>,
    pub calls: Calls,
    pub dropper: Dropper,
    pub metrics: Metrics,
    /// Where leaves and ends go to be carried out in Janus (`crate::sfu::janitor`).
    pub sfu_cleanup: Option<tokio::sync::mpsc::UnboundedSender<crate::sfu::Cleanup>>,
    /// Set once the follower has partitions and found nothing more to read: the call state
    /// holds every call the log held then (the tier's readiness).
    pub caught_up: Arc<AtomicBool>,
}

/// How long the log must stay quiet before the call state counts as caught up.
const QUIET: Duration = Duration::from_millis(500);

/// Which writer schemas carry records a reader acts on: most records are messages, and once a
/// schema id is known to be none of the wanted kinds, its records are skipped undecoded.
pub(crate) struct Interest {
    wanted: fn(&str) -> bool,
    by_schema: HashMap<u32, bool>,
}

impl Interest {
    /// `wanted` says it of an event kind (`call_started`, ...).
    pub(crate) fn new(wanted: fn(&str) -> bool) -> Self {
        Self {
            wanted,
            by_schema: HashMap::new(),
        }
    }

    /// Whether the record is known to be of no wanted kind.
    pub(crate) fn skips(&self, payload: &[u8]) -> bool {
        schema_id(payload).and_then(|id| self.by_schema.get(&id)) == Some(&false)
    }

    /// Notes the kind `payload` decoded to; whether it is wanted.
    pub(crate) fn learn(&mut self, payload: &[u8], event: &DomainEvent) -> bool {
        let wanted = (self.wanted)(event.kind().as_str());
        if let Some(id) = schema_id(payload) {
            self.by_schema.insert(id, wanted);
        }
        wanted
    }
}

/// The registry id of a record's writer schema (Confluent wire format: magic 0, then 4 bytes).
fn schema_id(payload: &[u8]) -> Option<u32> {
    match payload {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

impl Follower {
    pub fn create(&self) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
        let consumer: StreamConsumer = schemas::kafka::consumer_config(&self.brokers, &self.group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .create()?;
        consumer.subscribe(&[
            schemas::topics::ROOM_EVENTS,
            schemas::topics::PRESENCE_EVENTS,
        ])?;
        Ok(consumer)
    }

    /// Runs until `stop`.
    pub async fn run(self, consumer: StreamConsumer, stop: CancellationToken) {
        let mut interest =
            Interest::new(|kind| kind.starts_with("call_") || kind == "presence_changed");
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => break,
                m = consumer.recv() => m,
                _ = tokio::time::sleep(QUIET), if !self.caught_up.load(Ordering::Relaxed) => {
                    let assigned = consumer.assignment().map(|a| a.count() > 0).unwrap_or(false);
                    if assigned {
                        self.caught_up.store(true, Ordering::Relaxed);
                        tracing::info!("call state caught up with the log");
                    }
                    continue;
                }
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    self.metrics.log_errors.inc();
                    tracing::warn!(error = %e, "reading the room events; going on");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            let payload = message.payload().unwrap_or_default();
            if interest.skips(payload) {
                self.store(&consumer, &message);
                continue;
            }
            let decoded = platform::retry::until_ok("decode room event", &stop, || async {
                match self.codec.decode(payload).await {
                    Err(e) if e.is_transient() => Err(e),
                    other => Ok(other),
                }
            })
            .await;
            let Some(decoded) = decoded else { break };
            match decoded {
                Ok(event) => {
                    interest.learn(payload, &event);
                    if let Some(user) = self.disconnected(&event, &stop).await
                        && !self.drop_offline(&user, &stop).await
                    {
                        break;
                    }
                    let applied = platform::retry::until_ok("apply call event", &stop, || {
                        let calls = &self.calls;
                        let metrics = &self.metrics;
                        let event = &event;
                        async move {
                            calls.apply(event).await.inspect_err(|_| {
                                metrics.store_errors.inc();
                            })
                        }
                    })
                    .await;
                    match applied {
                        Some(true) => {
                            self.metrics.call_events.inc();
                            if let (Some(cleanup), Some(job)) =
                                (&self.sfu_cleanup, crate::sfu::Cleanup::after(&event))
                            {
                                let _ = cleanup.send(job);
                            }
                        }
                        Some(false) => {}
                        None => break,
                    }
                    if let Some(user) = self.joined_while_away(&event, &stop).await
                        && !self.drop_offline(&user, &stop).await
                    {
                        break;
                    }
                }
                // Not an event this build can read, so not a call event it could act on.
                Err(e) => {
                    self.metrics.undecodable.inc();
                    tracing::debug!(error = %e, offset = message.offset(), "undecodable record");
                }
            }
            if stop.is_cancelled() {
                // Stopped mid-record: it may be half done, so its offset is not stored.
                break;
            }
            self.store(&consumer, &message);
        }
        if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(error = %e, "last commit on stop");
        }
    }

    /// Takes `user` out of their calls, retrying until done; false when stopped first.
    async fn drop_offline(&self, user: &str, stop: &CancellationToken) -> bool {
        let dropped = platform::retry::until_ok("drop a disconnected participant", stop, || {
            self.dropper.offline(user)
        })
        .await;
        if let Some(n) = dropped {
            self.metrics.dropped.inc_by(n as u64);
        }
        dropped.is_some()
    }

    /// A presence transition: noted; for an offline, the user whose calls to leave.
    async fn disconnected(&self, event: &DomainEvent, stop: &CancellationToken) -> Option<String> {
        let DomainEvent::PresenceChanged(p) = event else {
            return None;
        };
        let user = p.envelope.user_id.clone()?;
        let offline = p.status == PresenceStatus::Offline;
        platform::retry::until_ok("note a presence transition", stop, || {
            self.calls
                .note_presence(&user, offline, p.envelope.occurred_at)
        })
        .await?;
        offline.then_some(user)
    }

    /// A start or join by a user whose latest presence is an offline that came after it (read
    /// first, the topics being independent): that user's sockets had dropped already.
    async fn joined_while_away(
        &self,
        event: &DomainEvent,
        stop: &CancellationToken,
    ) -> Option<String> {
        let (user, at) = match event {
            DomainEvent::CallStarted(e) => (&e.initiator_id, e.envelope.occurred_at),
            DomainEvent::CallJoined(e) => (&e.member_id, e.envelope.occurred_at),
            _ => return None,
        };
        let since = platform::retry::until_ok("read a presence transition", stop, || {
            self.calls.offline_since(user)
        })
        .await??;
        (since >= at).then(|| user.clone())
    }

    /// Marks the record done: its offset goes out with the next auto-commit.
    fn store(&self, consumer: &StreamConsumer, message: &rdkafka::message::BorrowedMessage<'_>) {
        if let Err(e) = consumer.store_offset_from_message(message) {
            tracing::warn!(error = %e, "cannot store the offset");
        }
    }
}
