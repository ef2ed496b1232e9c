//! `serve-lag`: every consumer group's lag as Prometheus metrics, measured from outside the
//! consumers (their committed offsets against the log's end), so a projector that stopped
//! altogether shows as lagging instead of as missing series. The monitoring stack scrapes it
//! (`deploy/monitoring`: the ProjectorLag alerts).
//!
//! - `consumer_group_lag_records{group,role,topic,partition}`: records not yet committed;
//! - `consumer_group_lag_seconds{group,role,topic,partition}`: how long ago the log first held
//!   a record past the committed offset (0 when none), from the exporter's own history of each
//!   partition's end (as kafka-lag-exporter does; no record is fetched). One record of lag is
//!   not counted in seconds: a transaction's commit marker sits at the end of a partition
//!   written transactionally, and a consumer that read everything may commit the offset
//!   before it.
//!
//! `role` is `projector` for the projectors' groups (the alert rules look at those) and `other`
//! for the rest (signaling, groups of tests long gone).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus::{IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::lag::{self, Row};

/// Samples of a partition's end kept: an hour at the default 5 s.
const HISTORY: usize = 720;

struct Gauges {
    records: IntGaugeVec,
    seconds: IntGaugeVec,
}

impl Gauges {
    fn register(registry: &Registry) -> anyhow::Result<Self> {
        let labels = ["group", "role", "topic", "partition"];
        let records = IntGaugeVec::new(
            Opts::new(
                "consumer_group_lag_records",
                "Records of the partition the group has not committed yet",
            ),
            &labels,
        )?;
        let seconds = IntGaugeVec::new(
            Opts::new(
                "consumer_group_lag_seconds",
                "How long ago the log first held a record past the group's committed offset",
            ),
            &labels,
        )?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Self { records, seconds })
    }
}

/// Each partition's end over time, for the age of a lag.
#[derive(Default)]
struct Ends {
    samples: HashMap<(String, i32), VecDeque<(Instant, i64)>>,
}

impl Ends {
    fn note(&mut self, now: Instant, rows: &[Row]) {
        for row in rows.iter().filter(|r| r.partition >= 0) {
            let samples = self
                .samples
                .entry((row.topic.clone(), row.partition))
                .or_default();
            if samples.back().is_none_or(|(_, end)| *end != row.end) {
                samples.push_back((now, row.end));
                if samples.len() > HISTORY {
                    samples.pop_front();
                }
            }
        }
    }

    /// Seconds since the end was first seen past `committed + 1` (at most the history's span).
    fn age(&self, now: Instant, topic: &str, partition: i32, committed: i64) -> i64 {
        let Some(samples) = self.samples.get(&(topic.to_string(), partition)) else {
            return 0;
        };
        samples
            .iter()
            .find(|(_, end)| *end > committed + 1)
            .map_or(0, |(at, _)| now.duration_since(*at).as_secs() as i64)
    }
}

/// Replaces what is shown with `rows` (a group or partition gone since disappears).
fn show(gauges: &Gauges, ends: &Mutex<Ends>, projectors: &[String], rows: &[Row]) {
    let now = Instant::now();
    let mut ends = ends.lock().unwrap_or_else(|p| p.into_inner());
    ends.note(now, rows);
    gauges.records.reset();
    gauges.seconds.reset();
    for row in rows {
        let (Some(lag), Some(committed)) = (row.lag(), row.committed) else {
            continue;
        };
        let role = if projectors.contains(&row.group) {
            "projector"
        } else {
            "other"
        };
        let partition = row.partition.to_string();
        let labels = [
            row.group.as_str(),
            role,
            row.topic.as_str(),
            partition.as_str(),
        ];
        gauges.records.with_label_values(&labels).set(lag);
        let age = ends.age(now, &row.topic, row.partition, committed);
        gauges.seconds.with_label_values(&labels).set(age);
    }
}

/// Serves `/metrics` (and `/healthz`, `/readyz`) on `listen` until SIGTERM, measuring every
/// `every`.
pub async fn serve(
    brokers: String,
    registry_url: String,
    (known, projectors): (Vec<String>, Vec<String>),
    listen: SocketAddr,
    every: Duration,
    timeout: Duration,
) -> anyhow::Result<()> {
    let registry = Registry::new();
    let gauges = Arc::new(Gauges::register(&registry)?);
    let ops = platform::ops::Ops::new(registry)
        .dependencies(schemas::kafka::log_checks(&brokers, &registry_url));
    let stop = CancellationToken::new();
    let ends = Arc::new(Mutex::new(Ends::default()));
    let measuring = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let (brokers, known) = (brokers.clone(), known.clone());
                let measured =
                    tokio::task::spawn_blocking(move || lag::lag(&brokers, &known, timeout)).await;
                match measured {
                    Ok(Ok(rows)) => show(&gauges, &ends, &projectors, &rows),
                    // The broker's absence shows as dependency_up; the last values stay.
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot measure the lag"),
                    Err(e) => tracing::warn!(error = %e, "the lag measurement failed"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    };
    let listener =
        platform::listen::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "lag exporter ready");
    let shutdown = stop.clone();
    axum::serve(listener, ops.router::<()>())
        .with_graceful_shutdown(async move {
            platform::shutdown::signal().await;
            shutdown.cancel();
        })
        .await?;
    stop.cancel();
    let _ = measuring.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(end: i64) -> Row {
        Row {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            committed: Some(0),
            end,
        }
    }

    #[test]
    fn a_lag_is_as_old_as_the_first_end_seen_past_the_committed_offset() {
        let mut ends = Ends::default();
        let start = Instant::now();
        ends.note(start, &[row(10)]);
        ends.note(start + Duration::from_secs(30), &[row(20)]);
        ends.note(start + Duration::from_secs(60), &[row(30)]);
        let now = start + Duration::from_secs(90);
        // Committed 5: the end was past it at the first sample already.
        assert_eq!(ends.age(now, "t", 0, 5), 90);
        // Committed 15: the end passed 16 between the first and second sample.
        assert_eq!(ends.age(now, "t", 0, 15), 60);
        // Caught up, or one behind (a commit marker): no age.
        assert_eq!(ends.age(now, "t", 0, 30), 0);
        assert_eq!(ends.age(now, "t", 0, 29), 0);
        assert_eq!(ends.age(now, "u", 0, 0), 0);
    }
}
