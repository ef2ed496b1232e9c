//! The fenced appender of one room partition: Kafka transactions under ids derived from the
//! partition.
//!
//! Why transactions: the consumer group says which instance should write a partition, but an
//! instance that missed a rebalance (paused, cut off from the group) would go on appending after
//! its successor took over. Opening an appender calls `init_transactions` on the partition's
//! transactional ids: from then on the broker refuses every write and commit of any earlier
//! holder of those ids, and aborts whatever transaction it left open. Every room-topic consumer
//! reads `read_committed`, so what a fenced writer sent but never committed is never seen, and a
//! command is answered only after its transaction committed.
//!
//! Why two ids taking turns: after a commit the broker writes the transaction's markers for a
//! few more milliseconds, and a transaction begun at once under the same id is refused
//! (CONCURRENT_TRANSACTIONS) and retried by librdkafka 20 ms later. Back-to-back transactions
//! under one id measured 28-38 ms each here, against 6-9 ms when the next transaction starts a
//! moment later; with two ids the other one takes the next batch while the first one's markers
//! are written. Both ids are fenced together, so the guarantee is the same.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use schemas::topics::ROOM_EVENTS;

use crate::error::CommandError;

/// How long a transaction may stay open before the broker aborts it: the bound on how long a
/// writer that died mid-transaction holds back `read_committed` readers of its partition when
/// no successor fences it sooner (one normally does within the group's session timeout). Also
/// each record's delivery timeout, so long enough to ride out a partition leader's failover.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on `init_transactions` / commit / abort calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a commit that times out is retried before the append counts as failed: past the
/// transaction timeout the coordinator has settled it one way or the other.
const COMMIT_RETRIES_FOR: Duration = Duration::from_secs(60);

/// An append slower than this is logged with where its time went.
const SLOW_APPEND: Duration = Duration::from_secs(2);

/// One record to append: key and encoded value.
pub type Record = (String, Vec<u8>);

/// Why an append did not commit.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another instance took the partition over: this one must stop writing it.
    #[error("fenced: another writer owns partition {partition} now ({reason})")]
    Fenced { partition: i32, reason: String },
    /// The transaction was aborted (or its outcome is unknown): nothing of it is visible to
    /// `read_committed` readers unless it committed after all, which a rebuild from the log finds.
    #[error("append to partition {partition} failed: {reason}")]
    Failed { partition: i32, reason: String },
}

pub struct Appender {
    producers: [FutureProducer; 2],
    turn: usize,
    partition: i32,
}

impl Appender {
    /// Creates the partition's two transactional producers and fences every earlier holder of
    /// their ids (`id_prefix` names the writer group, so separate deployments on one broker do
    /// not fence each other).
    pub async fn open(
        brokers: &str,
        id_prefix: &str,
        partition: i32,
    ) -> Result<Self, CommandError> {
        let producer = |turn: &str| -> Result<FutureProducer, CommandError> {
            Ok(schemas::kafka::producer_config(brokers)
                .set(
                    "transactional.id",
                    format!("{id_prefix}.{ROOM_EVENTS}.{partition}.{turn}"),
                )
                .set(
                    "transaction.timeout.ms",
                    TRANSACTION_TIMEOUT.as_millis().to_string(),
                )
                // librdkafka requires a record's delivery timeout within the transaction's.
                .set(
                    "message.timeout.ms",
                    TRANSACTION_TIMEOUT.as_millis().to_string(),
                )
                .create()
                .map_err(schemas::SchemaError::from)?)
        };
        let producers = [producer("a")?, producer("b")?];
        for p in &producers {
            let p = p.clone();
            tokio::task::spawn_blocking(move || p.init_transactions(CALL_TIMEOUT))
                .await
                .map_err(|e| CommandError::Internal(e.to_string()))?
                .map_err(|e| {
                    CommandError::Unavailable(format!(
                        "cannot take over partition {partition}: {e}"
                    ))
                })?;
        }
        Ok(Self {
            producers,
            turn: 0,
            partition,
        })
    }

    /// Appends `records` to the partition, in order, as one transaction; `Ok` once committed.
    pub async fn append(&mut self, records: &[Record]) -> Result<(), AppendError> {
        let started = std::time::Instant::now();
        let producer = self.producers[self.turn].clone();
        producer
            .begin_transaction()
            .map_err(|e| self.error(e, "begin"))?;
        let mut deliveries = Vec::with_capacity(records.len());
        let mut failure = None;
        for (key, payload) in records {
            let record = FutureRecord::to(ROOM_EVENTS)
                .key(key)
                .payload(payload)
                .partition(self.partition);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((e, _)) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // Every record acknowledged before the commit: rdkafka's commit first flushes by
        // polling in 100 ms steps, which costs nothing only when nothing is left in flight.
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        if let Some(e) = failure {
            return Err(self.abort_after(&producer, e, "produce").await);
        }
        let produced = started.elapsed();
        // A commit that timed out is still under way: librdkafka refuses an abort meanwhile,
        // and the broker may yet commit it, so the answers wait until it settles (committed,
        // fenced or abortable) instead of being refused while their records may land.
        let commit_started = std::time::Instant::now();
        let committed = loop {
            let committing = producer.clone();
            let result =
                tokio::task::spawn_blocking(move || committing.commit_transaction(CALL_TIMEOUT))
                    .await
                    .map_err(|e| AppendError::Failed {
                        partition: self.partition,
                        reason: e.to_string(),
                    })?;
            match result {
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && commit_started.elapsed() < COMMIT_RETRIES_FOR =>
                {
                    tracing::warn!(partition = self.partition, error = %e, "commit not settled yet; retrying it");
                }
                other => break other,
            }
        };
        if started.elapsed() >= SLOW_APPEND {
            // Answers wait for this; past the command timeout their clients were told 503.
            tracing::warn!(
                partition = self.partition,
                records = records.len(),
                produce_ms = produced.as_millis() as u64,
                commit_ms = commit_started.elapsed().as_millis() as u64,
                "slow append"
            );
        }
        match committed {
            Ok(()) => {
                self.turn ^= 1;
                Ok(())
            }
            Err(e) => Err(self.abort_after(&producer, e, "commit").await),
        }
    }

    /// Aborts the transaction after `e` and says why the append failed. An abort refused as
    /// fenced means fenced whatever `e` was: a writer paused past its successor's take-over sees
    /// its records time out first, and learns only from the abort that the id moved on.
    async fn abort_after(
        &self,
        producer: &FutureProducer,
        e: KafkaError,
        stage: &str,
    ) -> AppendError {
        let error = self.error(e, stage);
        if matches!(error, AppendError::Fenced { .. }) {
            return error;
        }
        let producer = producer.clone();
        let aborted = tokio::task::spawn_blocking(move || producer.abort_transaction(CALL_TIMEOUT))
            .await
            .map_err(|e| e.to_string());
        match aborted {
            Ok(Ok(())) => error,
            Ok(Err(abort)) if is_fenced(&abort) => self.error(abort, "abort"),
            failed => {
                // The producer may be unusable now; the writer opens a fresh appender anyway.
                tracing::warn!(partition = self.partition, result = ?failed, "abort_transaction failed");
                error
            }
        }
    }

    fn error(&self, e: KafkaError, stage: &str) -> AppendError {
        let reason = format!("{stage}: {e}");
        if is_fenced(&e) {
            AppendError::Fenced {
                partition: self.partition,
                reason,
            }
        } else {
            AppendError::Failed {
                partition: self.partition,
                reason,
            }
        }
    }
}

/// Whether `e` means a newer holder of the transactional id exists: the one case where taking
/// the partition again would be wrong. Other fatal errors (an invalid transaction state after
/// a broker failover, say) leave the producer unusable but the partition ours: the writer opens
/// a fresh appender and rebuilds.
fn is_fenced(e: &KafkaError) -> bool {
    let fenced = |code: RDKafkaErrorCode| {
        matches!(
            code,
            RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced
        )
    };
    match e {
        KafkaError::Transaction(t) => fenced(t.code()),
        other => other.rdkafka_error_code().is_some_and(fenced),
    }
}
