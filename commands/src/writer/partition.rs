//! The single writer of one room partition.
//!
//! One task per owned partition holds the state of its rooms and handles their commands one
//! after another, so each room's `seq` is assigned by exactly one place. Appends are pipelined:
//! a command's events are applied to the state and handed to the producer, and the next command
//! is decided without waiting for the broker; the client gets its answer only once the broker
//! acknowledged. The idempotent producer keeps the partition's records in send order. If an
//! append fails, the state may be ahead of the log, so the writer stops taking commands, waits
//! for every append in flight to settle, and rebuilds its rooms from the log before going on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::catchup::catch_up;
use super::directory::OwnerDirectory;
use super::metrics::WriterMetrics;
use crate::error::CommandError;
use crate::log::{EventLog, delivered};
use crate::rooms::{Actor, Applied, Command, Decision, Outcome, Rooms, decide};

pub struct Job {
    pub room_id: String,
    pub actor: Actor,
    pub command: Command,
    pub reply: oneshot::Sender<Result<Outcome, CommandError>>,
}

pub struct PartitionWriter {
    pub partition: i32,
    pub log: Arc<EventLog>,
    pub metrics: WriterMetrics,
    pub jobs: mpsc::Receiver<Job>,
    pub ready: watch::Sender<bool>,
    pub stop: CancellationToken,
    pub directory: OwnerDirectory,
}

impl PartitionWriter {
    pub async fn run(mut self) {
        let p = self.partition;
        let mut rooms = Rooms::default();
        let mut next_offset = match self.rebuild(&mut rooms, 0).await {
            Some(offset) => offset,
            None => return,
        };
        let _ = self.ready.send(true);
        // Announce at once so other instances forward here without waiting for the refresh.
        if let Err(e) = self.directory.claim(&[p]).await {
            tracing::warn!(partition = p, error = %e, "cannot publish ownership");
        }
        let (settled_tx, mut settled_rx) = mpsc::unbounded_channel::<bool>();
        let mut in_flight = 0usize;
        let mut failed = false;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                Some(ok) = settled_rx.recv() => {
                    in_flight -= 1;
                    failed |= !ok;
                }
                job = self.jobs.recv(), if !failed => {
                    let Some(job) = job else { break };
                    if !self.handle(job, &mut rooms, &settled_tx).await {
                        failed = true;
                    } else {
                        in_flight += 1;
                    }
                }
            }
            if failed && in_flight == 0 {
                self.metrics.rebuilds.inc();
                tracing::warn!(
                    partition = p,
                    "append failed; rebuilding the partition from the log"
                );
                rooms = Rooms::default();
                next_offset = match self.rebuild(&mut rooms, 0).await {
                    Some(offset) => offset,
                    None => return,
                };
                failed = false;
            }
        }
        // Hand over cleanly: every append in flight settles before the next owner catches up.
        let deadline = Instant::now() + Duration::from_secs(30);
        while in_flight > 0 && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(1), settled_rx.recv()).await {
                Ok(Some(_)) => in_flight -= 1,
                Ok(None) => break,
                Err(_) => {}
            }
        }
        tracing::info!(
            partition = p,
            next_offset,
            rooms = rooms.len(),
            "partition writer stopped"
        );
    }

    /// Catches up from `from` until it succeeds or the writer is stopped (`None`).
    async fn rebuild(&self, rooms: &mut Rooms, from: i64) -> Option<i64> {
        loop {
            match catch_up(&self.log, self.partition, from, rooms, &self.metrics).await {
                Ok(offset) => return Some(offset),
                Err(e) => {
                    tracing::warn!(partition = self.partition, error = %e, "catch-up failed; retrying");
                    *rooms = Rooms::default();
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Decides one job. Returns true when exactly one settlement will arrive on `settled` for it
    /// (false when the append failed, an enqueue failure, is reported); false when the state
    /// became inconsistent and must be rebuilt at once.
    async fn handle(
        &self,
        job: Job,
        rooms: &mut Rooms,
        settled: &mpsc::UnboundedSender<bool>,
    ) -> bool {
        let started = Instant::now();
        let command_name = job.command.name();
        let decision = decide(
            &job.room_id,
            rooms.get(&job.room_id),
            &job.actor,
            job.command,
        );
        let (events, outcome) = match decision {
            Err(e) => {
                self.metrics
                    .commands
                    .with_label_values(&[command_name, outcome_label(&e)])
                    .inc();
                let _ = job.reply.send(Err(e));
                let _ = settled.send(true);
                return true;
            }
            Ok(Decision::Noop(outcome)) => {
                self.metrics
                    .commands
                    .with_label_values(&[command_name, "noop"])
                    .inc();
                let _ = job.reply.send(Ok(outcome));
                let _ = settled.send(true);
                return true;
            }
            Ok(Decision::Emit(events, outcome)) => (events, outcome),
        };
        for event in &events {
            if let Applied::Conflict(reason) = rooms.apply(event) {
                // Cannot happen unless decide and apply disagree; refuse rather than write it.
                let _ = job.reply.send(Err(CommandError::Internal(format!(
                    "refusing inconsistent event: {reason}"
                ))));
                return false;
            }
        }
        let mut deliveries = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        for event in &events {
            match self
                .log
                .send_keeping_payload(event, Some(self.partition))
                .await
            {
                Ok((delivery, payload)) => {
                    deliveries.push(delivery);
                    payloads.push(payload);
                }
                Err(e) => {
                    self.metrics
                        .commands
                        .with_label_values(&[command_name, "unavailable"])
                        .inc();
                    let _ = job.reply.send(Err(e));
                    // Whatever was enqueued still settles; wait for it before rebuilding.
                    let settled = settled.clone();
                    tokio::spawn(async move {
                        for d in deliveries {
                            let _ = delivered(d).await;
                        }
                        let _ = settled.send(false);
                    });
                    return true;
                }
            }
        }
        let settled = settled.clone();
        let metrics = self.metrics.clone();
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut result = Ok(outcome);
            for d in deliveries {
                if let Err(e) = delivered(d).await {
                    result = Err(e);
                }
            }
            let ok = result.is_ok();
            // Durable, then notify: only what the broker acknowledged goes on the fast channel.
            if ok {
                log.notify(&payloads).await;
            }
            metrics
                .commands
                .with_label_values(&[command_name, if ok { "ok" } else { "unavailable" }])
                .inc();
            metrics
                .latency
                .with_label_values(&[command_name])
                .observe(started.elapsed().as_secs_f64());
            let _ = job.reply.send(result);
            let _ = settled.send(ok);
        });
        true
    }
}

fn outcome_label(e: &CommandError) -> &'static str {
    match e {
        CommandError::Invalid(_) => "invalid",
        CommandError::Forbidden(..) => "forbidden",
        CommandError::NotFound(_) => "not_found",
        CommandError::Conflict(..) => "conflict",
        _ => "error",
    }
}
