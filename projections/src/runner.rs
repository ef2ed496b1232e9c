//! Drives one projector: read a batch, apply it (retrying until the store takes it, never
//! skipping), commit positions for lag reporting, repeat until shutdown.

use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use prometheus::{HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::deadletter::DeadLetter;
use crate::error::ProjectionError;
use crate::source::{Batch, Source};

#[derive(Clone)]
pub struct RunnerMetrics {
    pub events: IntCounterVec,
    pub batch_seconds: prometheus::HistogramVec,
    pub retries: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub position: IntGaugeVec,
}

impl RunnerMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            events: IntCounterVec::new(
                Opts::new(
                    "projection_events_total",
                    "Events seen by projector and outcome",
                ),
                &["projector", "outcome"],
            )?,
            batch_seconds: prometheus::HistogramVec::new(
                HistogramOpts::new("projection_batch_seconds", "Time to apply one batch").buckets(
                    vec![
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ],
                ),
                &["projector"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "projection_retries_total",
                    "Batches retried after a store error",
                ),
                &["projector"],
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "projection_dead_letters_total",
                    "Records sent to chat.dead-letter",
                ),
                &["consumer", "kind"],
            )?,
            position: IntGaugeVec::new(
                Opts::new("projection_position", "Next offset per partition"),
                &["projector", "topic", "partition"],
            )?,
        };
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.batch_seconds.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.position.clone()))?;
        Ok(m)
    }
}

/// Counts a projector reports per batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub applied: usize,
    pub duplicates: usize,
    pub conflicts: usize,
}

/// What the runner needs from a projector.
pub trait Project {
    fn name(&self) -> &'static str;
    /// Where this projector's store says it stands: the next offset per partition, read from
    /// the same store its batches write (so a crash cannot separate the two).
    fn checkpoints(
        &self,
    ) -> impl std::future::Future<Output = Result<crate::source::Positions, ProjectionError>> + Send;
    fn apply(
        &mut self,
        batch: &Batch,
        dead_letter: &DeadLetter,
    ) -> impl std::future::Future<Output = Result<Counts, ProjectionError>> + Send;
    /// Drops in-memory caches so a retried batch is judged against the store again.
    fn reset(&mut self);
    /// Whether the generation this projector writes is still the live one (`crate::live`) and
    /// whole; when a rebuild has switched away from it, or its store lost it, the projector
    /// reopens (on the new one, or from the log's start).
    fn is_live(&self) -> impl std::future::Future<Output = Result<bool, ProjectionError>> + Send {
        async { Ok(true) }
    }
}

/// Why a projector's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Shutdown,
    /// The live generation moved (a rebuild switched over): reopen on the new one.
    Moved,
}

/// How often a running projector checks that its generation is still live.
const LIVE_CHECK: Duration = Duration::from_secs(1);

/// How long a batch being applied may hold up a shutdown. Finishing it saves the next start
/// that work, but a store slowed by a backlog took longer than a supervisor waits (a 500-event
/// Mongo batch under the moonshot benchmark: past `deploy/local`'s 20 s, then SIGKILL).
/// Abandoning it is safe: every projector re-applies idempotently after a crash mid-batch
/// (`tests/crash.rs`, also for this path).
const APPLY_GRACE: Duration = Duration::from_secs(5);

/// Resolves `APPLY_GRACE` after shutdown was asked for.
async fn grace_over(shutdown: &CancellationToken) {
    shutdown.cancelled().await;
    tokio::time::sleep(APPLY_GRACE).await;
}

pub async fn run<P: Project>(
    mut projector: P,
    mut source: Source,
    dead_letter: DeadLetter,
    metrics: RunnerMetrics,
    shutdown: CancellationToken,
) -> Result<Ended, ProjectionError> {
    let name = projector.name();
    let mut checked = Instant::now();
    // Known positions from the start, so "caught up" is visible even with nothing new to read.
    for ((topic, partition), next) in source.start() {
        metrics
            .position
            .with_label_values(&[name, topic.name(), &partition.to_string()])
            .set(*next);
    }
    tracing::info!(projector = name, "projector running");
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = source.next_batch() => batch?,
        };
        if checked.elapsed() >= LIVE_CHECK {
            checked = Instant::now();
            match projector.is_live().await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(
                        projector = name,
                        "the live generation moved or lost its model; reopening"
                    );
                    return Ok(Ended::Moved);
                }
                Err(e) => {
                    tracing::warn!(projector = name, error = %e, "cannot read the live generation")
                }
            }
        }
        let started = Instant::now();
        let mut delays = platform::retry::policy().build();
        let counts = loop {
            if !batch.has_records() {
                break Counts::default();
            }
            let applied = tokio::select! {
                applied = projector.apply(&batch, &dead_letter) => applied,
                () = grace_over(&shutdown) => {
                    tracing::warn!(
                        projector = name,
                        "shutdown: abandoning the batch being applied; the next start applies it"
                    );
                    return Ok(Ended::Shutdown);
                }
            };
            match applied {
                Ok(counts) => break counts,
                Err(ProjectionError::StoreBehind(why)) => {
                    tracing::warn!(
                        projector = name,
                        why,
                        "the store lost writes it had acknowledged; reopening from its checkpoints"
                    );
                    metrics.retries.with_label_values(&[name]).inc();
                    return Ok(Ended::Moved);
                }
                Err(e) => {
                    metrics.retries.with_label_values(&[name]).inc();
                    tracing::warn!(projector = name, error = %e, "batch failed; retrying it");
                    projector.reset();
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                        _ = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))) => {}
                    }
                }
            }
        };
        metrics
            .batch_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        for (outcome, n) in [
            ("applied", counts.applied),
            ("duplicate", counts.duplicates),
            ("conflict", counts.conflicts),
            ("undecodable", batch.undecodable),
        ] {
            metrics
                .events
                .with_label_values(&[name, outcome])
                .inc_by(n as u64);
        }
        for ((topic, partition), next) in &batch.positions {
            metrics
                .position
                .with_label_values(&[name, topic.name(), &partition.to_string()])
                .set(*next);
        }
        source.commit(&batch.positions);
    }
    tracing::info!(projector = name, "projector stopped");
    Ok(Ended::Shutdown)
}
