//! The single writer of one room partition.
//!
//! One task per owned partition holds the state of its rooms and decides their commands one
//! after another, so each room's `seq` is assigned by exactly one place. Its first act is to
//! fence every earlier writer of the partition (`txn::Appender::open`); only then does it
//! rebuild its rooms from the log (`read_committed`), so the state it starts from is final.
//!
//! Appends are batched transactions: while one transaction commits, the next commands are
//! decided against the state as it will be and collected; when the commit returns, they go out
//! together as the next transaction. Every answer, including refusals and no-ops decided on a
//! state with uncommitted events in it, waits for the transactions before it, so nobody is told
//! anything the log might still lose. If a transaction fails, the state may be ahead of the log:
//! every answer still waiting gets 503 (clients retry; idempotency keys make that safe), and the
//! writer reopens its appender and rebuilds its rooms from the log before going on. If it was
//! fenced, another instance owns the partition now and this writer stops.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::catchup::catch_up;
use super::directory::OwnerDirectory;
use super::metrics::WriterMetrics;
use super::txn::{AppendError, Appender, Record};
use crate::error::CommandError;
use crate::log::EventLog;
use crate::rooms::{Actor, Applied, Command, Decision, Outcome, Rooms, decide};

/// Records per transaction at most; more decided commands wait for the next one.
const MAX_TRANSACTION_RECORDS: usize = 1000;
/// How long the next transaction waits after a commit for more commands to join it: half as
/// long as the last transaction took, within these bounds. Under load each transaction costs
/// the broker several requests and log appends of its own (begin, markers, commit), so fewer,
/// larger ones carry more posts: `bench/run commands` (128 posts in flight over 12 partitions,
/// the whole stack on 2 cores) accepted 935-1,008/s without waiting, 1,292/s with 3 ms and
/// 1,285/s with this. A lone client's next post comes later than that and never waits.
const LINGER_AFTER_COMMIT: Duration = Duration::from_millis(3);
const LINGER_AT_MOST: Duration = Duration::from_millis(25);
/// How long a writer whose append failed waits before taking the partition again: a revocation
/// that is on its way (an instance resuming from a pause) stops it first.
const REOPEN_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How soon ring-outs are tried again after one was refused (say, the registry was away).
const RING_RETRY: Duration = Duration::from_secs(1);

pub struct Job {
    pub room_id: String,
    pub actor: Actor,
    pub command: Command,
    pub reply: oneshot::Sender<Result<Outcome, CommandError>>,
}

pub struct PartitionWriter {
    pub partition: i32,
    pub log: Arc<EventLog>,
    /// Prefix of the partition's transactional ids (the writer group).
    pub id_prefix: String,
    pub metrics: WriterMetrics,
    pub jobs: mpsc::Receiver<Job>,
    pub ready: watch::Sender<bool>,
    pub stop: CancellationToken,
    pub directory: OwnerDirectory,
    /// How long a call rings unanswered before this writer ends it.
    pub call_ring: Duration,
}

/// A decided command waiting for the transactions before it (and its own) to commit.
struct Answer {
    reply: oneshot::Sender<Result<Outcome, CommandError>>,
    result: Result<Outcome, CommandError>,
    command: &'static str,
    started: Instant,
    /// Its records, in order (none for refusals and no-ops).
    records: Vec<Record>,
}

type Commit =
    Pin<Box<dyn Future<Output = (Appender, Vec<Answer>, Result<(), AppendError>)> + Send>>;

impl PartitionWriter {
    pub async fn run(mut self) {
        let p = self.partition;
        let Some(appender) = self.take_over().await else {
            return;
        };
        let Some(mut rooms) = self.rebuild().await else {
            return;
        };
        let _ = self.ready.send(true);
        // Announce at once so other instances forward here without waiting for the refresh.
        if let Err(e) = self.directory.claim(&[p]).await {
            tracing::warn!(partition = p, error = %e, "cannot publish ownership");
        }
        let mut idle = Some(appender);
        let mut waiting: Vec<Answer> = Vec::new();
        let mut committing: Option<Commit> = None;
        let mut stopping = false;
        // Set when the state went wrong without an append failing (decide and apply disagreed):
        // no more commands until it is rebuilt.
        let mut poisoned = false;
        let mut next_start = tokio::time::Instant::now();
        let mut commit_started = tokio::time::Instant::now();
        let ring_ms = self.call_ring.as_millis() as i64;
        // A ring-out that could not be decided (the registry away) is tried again after this.
        let mut ring_floor = tokio::time::Instant::now();
        loop {
            let lingering = committing.is_none()
                && !waiting.is_empty()
                && tokio::time::Instant::now() < next_start;
            let ring_at = rooms
                .next_ring_out(ring_ms)
                .map(|at| instant_of(at).max(ring_floor));
            tokio::select! {
                biased;
                _ = self.stop.cancelled(), if !stopping => stopping = true,
                _ = tokio::time::sleep_until(next_start), if lingering => {}
                _ = sleep_until_some(ring_at), if !stopping && !poisoned => {
                    ring_floor = tokio::time::Instant::now() + RING_RETRY;
                    for (room_id, call_id) in rooms.rung_out(ring_ms, schemas::envelope::now_ms()) {
                        let job = Job {
                            room_id,
                            actor: Actor { user_id: String::new(), username: String::new() },
                            command: Command::RingTimeout { call_id },
                            reply: oneshot::channel().0,
                        };
                        let (answer, consistent) = self.decide(job, &mut rooms).await;
                        waiting.push(answer);
                        poisoned |= !consistent;
                    }
                }
                done = wait_for(&mut committing) => {
                    committing = None;
                    let (returned, answers, result) = done;
                    match result {
                        Ok(()) => {
                            let took = commit_started.elapsed();
                            next_start = tokio::time::Instant::now() + (took / 2).clamp(LINGER_AFTER_COMMIT, LINGER_AT_MOST);
                            idle = Some(returned);
                            self.committed(answers).await;
                        }
                        Err(error) => {
                            drop(returned);
                            self.refuse(answers.into_iter().chain(waiting.drain(..)), &error.to_string());
                            if let AppendError::Fenced { .. } = error {
                                self.metrics.fenced.inc();
                                tracing::error!(partition = p, %error, "fenced: another instance writes this partition now; stopping");
                                self.refuse_queued().await;
                                return;
                            }
                            self.metrics.rebuilds.inc();
                            tracing::warn!(partition = p, %error, "append failed; taking the partition again and rebuilding it from the log");
                            tokio::select! {
                                _ = self.stop.cancelled() => return,
                                _ = tokio::time::sleep(REOPEN_AFTER_FAILURE) => {}
                            }
                            let Some(fresh) = self.take_over().await else { return };
                            idle = Some(fresh);
                            let Some(rebuilt) = self.rebuild().await else { return };
                            rooms = rebuilt;
                        }
                    }
                }
                job = self.jobs.recv(), if !stopping && !poisoned => {
                    let Some(job) = job else { stopping = true; continue };
                    let (answer, consistent) = self.decide(job, &mut rooms).await;
                    waiting.push(answer);
                    poisoned |= !consistent;
                }
            }
            if poisoned && committing.is_none() {
                self.metrics.rebuilds.inc();
                self.refuse(waiting.drain(..), "the room state is being rebuilt; retry");
                let Some(rebuilt) = self.rebuild().await else {
                    return;
                };
                rooms = rebuilt;
                poisoned = false;
            }
            if committing.is_none()
                && !waiting.is_empty()
                && tokio::time::Instant::now() >= next_start
                && let Some(appender) = idle.take()
            {
                let (batch, later) = split_batch(std::mem::take(&mut waiting));
                waiting = later;
                commit_started = tokio::time::Instant::now();
                committing = Some(commit(appender, batch, self.metrics.clone()));
            }
            if stopping && committing.is_none() && waiting.is_empty() {
                break;
            }
        }
        tracing::info!(
            partition = p,
            rooms = rooms.len(),
            "partition writer stopped"
        );
    }

    /// Fences earlier writers of the partition, retrying until it succeeds or the writer is
    /// stopped (`None`).
    async fn take_over(&self) -> Option<Appender> {
        platform::retry::until_ok("take_partition", &self.stop, || {
            Appender::open(self.log.brokers(), &self.id_prefix, self.partition)
        })
        .await
    }

    /// The partition's rooms read back from the log's start, retried until it succeeds (`None`
    /// when the writer is stopped first).
    async fn rebuild(&self) -> Option<Rooms> {
        platform::retry::until_ok("catch_up", &self.stop, || async {
            let mut rooms = Rooms::default();
            catch_up(&self.log, self.partition, 0, &mut rooms, &self.metrics)
                .await
                .map(|_| rooms)
        })
        .await
    }

    /// Decides one command against the state as it will be once everything before it commits,
    /// and applies its events to that state. `false`: the state is no longer right.
    async fn decide(&self, job: Job, rooms: &mut Rooms) -> (Answer, bool) {
        let started = Instant::now();
        let command = job.command.name();
        let answer = |result, records| Answer {
            reply: job.reply,
            result,
            command,
            started,
            records,
        };
        let (events, outcome) = match decide(
            &job.room_id,
            rooms.get(&job.room_id),
            &job.actor,
            job.command,
        ) {
            Err(e) => return (answer(Err(e), Vec::new()), true),
            Ok(Decision::Noop(outcome)) => return (answer(Ok(outcome), Vec::new()), true),
            Ok(Decision::Emit(events, outcome)) => (events, outcome),
        };
        let mut records = Vec::with_capacity(events.len());
        for event in &events {
            match self.log.encode(event).await {
                Ok(record) => records.push(record),
                Err(e) => return (answer(Err(e), Vec::new()), true),
            }
        }
        if started.elapsed() >= Duration::from_secs(1) {
            // Every later command of the partition waited for this one.
            tracing::warn!(
                partition = self.partition,
                command,
                ms = started.elapsed().as_millis() as u64,
                "slow decision (encoding asks the schema registry for a new schema's id)"
            );
        }
        for event in &events {
            if let Applied::Conflict(reason) = rooms.apply(event) {
                // Cannot happen unless decide and apply disagree; refuse rather than write it.
                let refused =
                    CommandError::Internal(format!("refusing inconsistent event: {reason}"));
                return (answer(Err(refused), Vec::new()), false);
            }
        }
        (answer(Ok(outcome), records), true)
    }

    /// Durable, then notify, then answer.
    async fn committed(&self, answers: Vec<Answer>) {
        self.log
            .notify(answers.iter().flat_map(|a| a.records.iter()))
            .await;
        for answer in answers {
            let outcome = match &answer.result {
                Ok(_) if answer.records.is_empty() => "noop",
                Ok(_) => "ok",
                Err(e) => outcome_label(e),
            };
            self.metrics
                .commands
                .with_label_values(&[answer.command, outcome])
                .inc();
            if !answer.records.is_empty() {
                self.metrics
                    .latency
                    .with_label_values(&[answer.command])
                    .observe(answer.started.elapsed().as_secs_f64());
            }
            let _ = answer.reply.send(answer.result);
        }
    }

    /// Answers 503 (a failed batch and everything decided after it, on a state that assumed it).
    fn refuse(&self, answers: impl Iterator<Item = Answer>, reason: &str) {
        for answer in answers {
            self.metrics
                .commands
                .with_label_values(&[answer.command, "unavailable"])
                .inc();
            let _ = answer
                .reply
                .send(Err(CommandError::Unavailable(reason.to_string())));
        }
    }

    /// After fencing: commands already queued here are refused (their senders retry and reach
    /// the new owner).
    async fn refuse_queued(&mut self) {
        self.jobs.close();
        while let Some(job) = self.jobs.recv().await {
            let _ = job.reply.send(Err(CommandError::Unavailable(format!(
                "partition {} moved to another writer; retry",
                self.partition
            ))));
        }
    }
}

/// The tokio instant of a Unix-ms time (now if it is past).
fn instant_of(unix_ms: i64) -> tokio::time::Instant {
    let ahead = (unix_ms - schemas::envelope::now_ms()).max(0) as u64;
    tokio::time::Instant::now() + Duration::from_millis(ahead)
}

/// Sleeps until `at`; never when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The first answers up to [`MAX_TRANSACTION_RECORDS`] records (at least one answer), and the rest.
fn split_batch(mut waiting: Vec<Answer>) -> (Vec<Answer>, Vec<Answer>) {
    let mut records = 0;
    let mut take = 0;
    for answer in &waiting {
        if take > 0 && records + answer.records.len() > MAX_TRANSACTION_RECORDS {
            break;
        }
        records += answer.records.len();
        take += 1;
    }
    let later = waiting.split_off(take);
    (waiting, later)
}

/// Resolves when the commit in flight does; never while there is none.
async fn wait_for(
    committing: &mut Option<Commit>,
) -> (Appender, Vec<Answer>, Result<(), AppendError>) {
    match committing.as_mut() {
        Some(commit) => commit.await,
        None => std::future::pending().await,
    }
}

/// Appends the records of `batch` as one transaction (answers without records ride along).
fn commit(mut appender: Appender, batch: Vec<Answer>, metrics: WriterMetrics) -> Commit {
    Box::pin(async move {
        let records: Vec<Record> = batch
            .iter()
            .flat_map(|a| a.records.iter().cloned())
            .collect();
        if records.is_empty() {
            return (appender, batch, Ok(()));
        }
        let started = Instant::now();
        let result = appender.append(&records).await;
        if result.is_ok() {
            metrics
                .transactions
                .observe(started.elapsed().as_secs_f64());
            metrics.transaction_records.observe(records.len() as f64);
        }
        (appender, batch, result)
    })
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
