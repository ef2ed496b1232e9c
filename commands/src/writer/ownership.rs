//! Membership in the consumer group whose assignment decides room ownership.
//!
//! The group consumer never reads records (its partitions are paused); it exists for the
//! assignment and the rebalance callbacks. It runs on its own thread because the revocation
//! callback blocks until the revoked writers have settled their appends.
//!
//! A watchdog re-forms the group when partitions stay without a writer. The local broker
//! (tansu 0.6) can complete a generation whose leader died before sending the assignment: the
//! survivors get empty assignments and heartbeat happily ever after, so after a `kill -9` no
//! instance would write those rooms again. When the owner directory shows partitions nobody
//! claims for two checks in a row, well after the last rebalance, this instance leaves and
//! rejoins the group, which forms a fresh generation of the live members.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use schemas::topics::ROOM_EVENTS;
use tokio_util::sync::CancellationToken;

use super::Writer;
use crate::error::CommandError;

/// Seconds between orphan checks, and the quiet time after a rebalance before they count.
const WATCHDOG_PERIOD: Duration = Duration::from_secs(5);
const SETTLE_AFTER_REBALANCE: Duration = Duration::from_secs(10);

struct Membership {
    writer: Writer,
    last_rebalance: Mutex<Instant>,
}

impl Membership {
    fn touched(&self) {
        if let Ok(mut last) = self.last_rebalance.lock() {
            *last = Instant::now();
        }
    }

    fn quiet_for(&self) -> Duration {
        self.last_rebalance
            .lock()
            .map(|l| l.elapsed())
            .unwrap_or_default()
    }
}

impl ClientContext for Membership {}

fn room_partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements_for_topic(ROOM_EVENTS)
        .iter()
        .map(|e| e.partition())
        .collect()
}

impl ConsumerContext for Membership {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.touched();
        if let Rebalance::Revoke(list) = rebalance {
            self.writer.release(&room_partitions(list));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.touched();
        match rebalance {
            Rebalance::Assign(list) => {
                // Membership only: never fetch through the group consumer.
                if let Err(e) = consumer.pause(list) {
                    tracing::warn!(error = %e, "cannot pause the group consumer");
                }
                self.writer.acquire(&room_partitions(list));
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

pub fn spawn(
    writer: Writer,
    group: &str,
    shutdown: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, CommandError> {
    let consumer: BaseConsumer<Membership> =
        schemas::kafka::consumer_config(writer.inner.log.brokers(), group)
            .set("partition.assignment.strategy", "roundrobin")
            .create_with_context(Membership {
                writer: writer.clone(),
                last_rebalance: Mutex::new(Instant::now()),
            })
            .map_err(schemas::SchemaError::from)?;
    consumer
        .subscribe(&[ROOM_EVENTS])
        .map_err(schemas::SchemaError::from)?;
    let handle = std::thread::Builder::new()
        .name("commands-membership".into())
        .spawn(move || {
            let mut next_check = Instant::now() + WATCHDOG_PERIOD;
            let mut strikes = 0;
            while !shutdown.is_cancelled() {
                // Drives heartbeats and rebalance callbacks; records never arrive (paused).
                if let Some(Err(e)) = consumer.poll(Duration::from_millis(200)) {
                    tracing::warn!(error = %e, "group consumer error");
                }
                if Instant::now() < next_check {
                    continue;
                }
                next_check = Instant::now() + WATCHDOG_PERIOD;
                if consumer.context().quiet_for() < SETTLE_AFTER_REBALANCE {
                    strikes = 0;
                    continue;
                }
                let owned = writer.owned_partitions();
                let orphans = writer.inner.runtime.block_on(
                    writer
                        .inner
                        .directory
                        .orphans(writer.inner.partitions, &owned),
                );
                match orphans {
                    Ok(orphans) if !orphans.is_empty() => {
                        strikes += 1;
                        if strikes >= 2 {
                            tracing::warn!(
                                ?orphans,
                                "partitions without a writer; re-forming the group"
                            );
                            consumer.unsubscribe();
                            if let Err(e) = consumer.subscribe(&[ROOM_EVENTS]) {
                                tracing::error!(error = %e, "cannot rejoin the group");
                            }
                            consumer.context().touched();
                            strikes = 0;
                        }
                    }
                    Ok(_) => strikes = 0,
                    Err(e) => tracing::warn!(error = %e, "cannot read the owner directory"),
                }
            }
            // Leaving the group revokes our partitions (draining them) and hands them over now
            // instead of after the session timeout.
            consumer.unsubscribe();
            for _ in 0..10 {
                let _ = consumer.poll(Duration::from_millis(100));
            }
            let remaining = writer.owned_partitions();
            if !remaining.is_empty() {
                writer.release(&remaining);
            }
            tracing::info!("left the writer group");
        })
        .map_err(|e| CommandError::Internal(format!("cannot start the membership thread: {e}")))?;
    Ok(handle)
}
