//! Membership in the consumer group whose assignment decides room ownership.
//!
//! The group consumer never reads records (its partitions are paused); it exists for the
//! assignment and the rebalance callbacks. It runs on its own thread because the revocation
//! callback blocks until the revoked writers have settled their appends.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use schemas::topics::ROOM_EVENTS;
use tokio_util::sync::CancellationToken;

use super::Writer;
use crate::error::CommandError;

struct Membership {
    writer: Writer,
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
        if let Rebalance::Revoke(list) = rebalance {
            self.writer.release(&room_partitions(list));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
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
            })
            .map_err(schemas::SchemaError::from)?;
    consumer
        .subscribe(&[ROOM_EVENTS])
        .map_err(schemas::SchemaError::from)?;
    let handle = std::thread::Builder::new()
        .name("commands-membership".into())
        .spawn(move || {
            while !shutdown.is_cancelled() {
                // Drives heartbeats and rebalance callbacks; records never arrive (paused).
                if let Some(Err(e)) = consumer.poll(Duration::from_millis(200)) {
                    tracing::warn!(error = %e, "group consumer error");
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
