//! The write path: which instance writes which rooms, and the writers themselves.
//!
//! Ownership follows Kafka's consumer-group assignment of `chat.room-events`: an instance
//! writes exactly the rooms of the partitions the group assigned it. On assignment it fences
//! the partition's earlier writers through the broker (transactional ids per partition) and
//! rebuilds those rooms from the log before accepting a command for them; on revocation it
//! stops taking commands and lets every append in flight settle before the group moves on.
//! An instance that missed the revocation (paused, cut off) finds itself fenced at its next
//! append and stops. Commands for other partitions are forwarded to their owner.

mod catchup;
pub mod directory;
pub mod metrics;
mod ownership;
mod partition;
mod txn;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use schemas::partition::partition_for;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use self::directory::{ENTRY_TTL_SECS, OwnerDirectory};
use self::metrics::WriterMetrics;
use self::partition::{Job, PartitionWriter};
use crate::error::CommandError;
use crate::log::EventLog;
use crate::rooms::{Actor, Command, Outcome};

/// Commands queued per partition while its writer catches up or is busy; past it, 503.
const QUEUE_PER_PARTITION: usize = 4096;
/// How long a command looks for its room's writer while ownership is moving.
const ROUTE_PATIENCE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, serde::Serialize)]
pub struct Ownership {
    pub instance: String,
    pub partitions: i32,
    pub owned: Vec<i32>,
    pub ready: Vec<i32>,
}

struct Owned {
    jobs: mpsc::Sender<Job>,
    ready: watch::Receiver<bool>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    log: Arc<EventLog>,
    metrics: WriterMetrics,
    directory: OwnerDirectory,
    partitions: i32,
    /// The writer group: prefix of every partition's transactional ids.
    group: String,
    owned: RwLock<HashMap<i32, Owned>>,
    command_timeout: Duration,
    call_ring: Duration,
    runtime: tokio::runtime::Handle,
    /// Set after the first assignment (possibly empty) from the group.
    assigned_once: watch::Receiver<bool>,
    assigned_once_tx: watch::Sender<bool>,
}

#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
}

impl Writer {
    /// Joins `group` and starts writing the partitions it assigns to this instance.
    pub async fn start(
        log: Arc<EventLog>,
        metrics: WriterMetrics,
        directory: OwnerDirectory,
        group: &str,
        (command_timeout, call_ring): (Duration, Duration),
        shutdown: CancellationToken,
    ) -> Result<(Self, std::thread::JoinHandle<()>), CommandError> {
        let partitions = log.partition_count(schemas::topics::ROOM_EVENTS).await?;
        metrics.room_partitions.set(i64::from(partitions));
        let (assigned_once_tx, assigned_once) = watch::channel(false);
        let writer = Writer {
            inner: Arc::new(Inner {
                log,
                metrics,
                directory,
                partitions,
                group: group.to_string(),
                owned: RwLock::new(HashMap::new()),
                command_timeout,
                call_ring,
                runtime: tokio::runtime::Handle::current(),
                assigned_once,
                assigned_once_tx,
            }),
        };
        let membership = ownership::spawn(writer.clone(), group, shutdown.clone())?;
        tokio::spawn(writer.clone().refresh_directory(shutdown));
        Ok((writer, membership))
    }

    pub fn partitions(&self) -> i32 {
        self.inner.partitions
    }

    pub fn partition_of(&self, room_id: &str) -> i32 {
        partition_for(room_id, self.inner.partitions)
    }

    /// Which partitions this instance writes and which of them finished catching up
    /// (`GET /ownership`, for operators and tests).
    pub fn ownership(&self) -> Ownership {
        let (mut owned, mut ready) = (Vec::new(), Vec::new());
        if let Ok(map) = self.inner.owned.read() {
            for (p, w) in map.iter() {
                owned.push(*p);
                if *w.ready.borrow() {
                    ready.push(*p);
                }
            }
        }
        owned.sort_unstable();
        ready.sort_unstable();
        Ownership {
            instance: self.inner.directory.me().to_string(),
            partitions: self.inner.partitions,
            owned,
            ready,
        }
    }

    /// Ready when this instance is in the writer group and every partition it was assigned has
    /// caught up with the log, so load balancers and `deploy/local/up` send it traffic only
    /// when it can answer without waiting.
    pub fn readiness(&self) -> Result<(), String> {
        let ownership = self.ownership();
        if !*self.inner.assigned_once.borrow() {
            return Err("not yet assigned partitions by the writer group".into());
        }
        if ownership.ready.len() < ownership.owned.len() {
            return Err(format!(
                "catching up {} of {} partitions",
                ownership.owned.len() - ownership.ready.len(),
                ownership.owned.len()
            ));
        }
        Ok(())
    }

    fn local(&self, partition: i32) -> Option<(mpsc::Sender<Job>, watch::Receiver<bool>)> {
        let owned = self.inner.owned.read().ok()?;
        owned
            .get(&partition)
            .map(|o| (o.jobs.clone(), o.ready.clone()))
    }

    fn owned_partitions(&self) -> Vec<i32> {
        self.inner
            .owned
            .read()
            .map(|o| o.keys().copied().collect())
            .unwrap_or_default()
    }

    /// A fresh room id on a partition this instance writes (when it writes any), so creating a
    /// room needs no forwarding.
    pub fn new_room_id(&self) -> String {
        let owned = self.owned_partitions();
        for _ in 0..10_000 {
            let id = uuid::Uuid::now_v7().to_string();
            if owned.is_empty() || owned.contains(&self.partition_of(&id)) {
                return id;
            }
        }
        uuid::Uuid::now_v7().to_string()
    }

    /// The base URL of the instance that writes `room_id`'s partition when it is not this one
    /// (as far as the directory knows right now; `None` also when nobody does).
    pub async fn owner_elsewhere(&self, room_id: &str) -> Option<String> {
        let partition = self.partition_of(room_id);
        if self.local(partition).is_some() {
            return None;
        }
        self.remote_owner(partition).await.ok().flatten()
    }

    /// The directory's owner of `partition` when it is another instance (counted as a forward).
    async fn remote_owner(&self, partition: i32) -> Result<Option<String>, CommandError> {
        let owner = self.inner.directory.owner(partition).await?;
        let remote = owner.filter(|o| o != self.inner.directory.me());
        if remote.is_some() {
            self.inner.metrics.forwarded.inc();
        }
        Ok(remote)
    }

    /// Runs a command on its room's writer; [`CommandError::Moved`] when another instance
    /// writes the room.
    pub async fn execute(
        &self,
        room_id: String,
        actor: Actor,
        command: Command,
    ) -> Result<Outcome, CommandError> {
        let partition = self.partition_of(&room_id);
        // While ownership moves (a rebalance, an owner that just died) the partition may have
        // no writer for a moment: look again for a few seconds before answering 503.
        let deadline = tokio::time::Instant::now() + ROUTE_PATIENCE.min(self.inner.command_timeout);
        let (jobs, ready) = loop {
            if let Some(local) = self.local(partition) {
                break local;
            }
            if let Some(owner) = self.remote_owner(partition).await? {
                return Err(CommandError::Moved(owner));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CommandError::Unavailable(format!(
                    "no writer for partition {partition} right now (rebalancing)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut ready = ready;
        let timeout = self.inner.command_timeout;
        let result = tokio::time::timeout(timeout, async move {
            // Commands wait here while a newly assigned partition catches up.
            if ready.wait_for(|r| *r).await.is_err() {
                return Err(CommandError::Unavailable("partition writer stopped".into()));
            }
            let (reply, answer) = oneshot::channel();
            jobs.try_send(Job {
                room_id,
                actor,
                command,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    CommandError::Unavailable("room writer overloaded".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    CommandError::Unavailable("partition writer stopped".into())
                }
            })?;
            answer
                .await
                .map_err(|_| CommandError::Unavailable("partition writer stopped".into()))?
        })
        .await;
        result.unwrap_or_else(|_| {
            Err(CommandError::Unavailable(format!(
                "no answer within {} ms",
                timeout.as_millis()
            )))
        })
    }

    /// Starts writers for newly assigned partitions (called from the group's rebalance).
    fn acquire(&self, partitions: &[i32]) {
        let _guard = self.inner.runtime.enter();
        let Ok(mut owned) = self.inner.owned.write() else {
            return;
        };
        for &p in partitions {
            if owned.contains_key(&p) {
                continue;
            }
            let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE_PER_PARTITION);
            let (ready_tx, ready_rx) = watch::channel(false);
            let stop = CancellationToken::new();
            let writer = PartitionWriter {
                partition: p,
                log: self.inner.log.clone(),
                id_prefix: self.inner.group.clone(),
                metrics: self.inner.metrics.clone(),
                jobs: jobs_rx,
                ready: ready_tx,
                stop: stop.clone(),
                directory: self.inner.directory.clone(),
                call_ring: self.inner.call_ring,
            };
            let task = self.inner.runtime.spawn(writer.run());
            owned.insert(
                p,
                Owned {
                    jobs: jobs_tx,
                    ready: ready_rx,
                    stop,
                    task,
                },
            );
        }
        self.inner.metrics.partitions_owned.set(owned.len() as i64);
        let _ = self.inner.assigned_once_tx.send(true);
        tracing::info!(assigned = ?partitions, owned = owned.len(), "partitions assigned");
    }

    /// Stops the writers of revoked partitions and waits until their appends settled (called
    /// from the group's rebalance, on the membership thread, which may block).
    fn release(&self, partitions: &[i32]) {
        let removed: Vec<(i32, Owned)> = {
            let Ok(mut owned) = self.inner.owned.write() else {
                return;
            };
            let removed = partitions
                .iter()
                .filter_map(|p| owned.remove(p).map(|o| (*p, o)))
                .collect();
            self.inner.metrics.partitions_owned.set(owned.len() as i64);
            removed
        };
        let directory = self.inner.directory.clone();
        self.inner.runtime.block_on(async move {
            for (p, owned) in removed {
                owned.stop.cancel();
                if tokio::time::timeout(Duration::from_secs(35), owned.task)
                    .await
                    .is_err()
                {
                    tracing::error!(partition = p, "writer did not stop in time");
                }
                if let Err(e) = directory.release(p).await {
                    tracing::warn!(partition = p, error = %e, "cannot clear the owner entry");
                }
            }
        });
        tracing::info!(revoked = ?partitions, "partitions revoked");
    }

    /// Keeps this instance's directory entries alive for the partitions it is ready to write.
    async fn refresh_directory(self, shutdown: CancellationToken) {
        let period = Duration::from_secs(ENTRY_TTL_SECS / 3);
        loop {
            let ready: Vec<i32> = self
                .inner
                .owned
                .read()
                .map(|o| {
                    o.iter()
                        .filter(|(_, w)| *w.ready.borrow())
                        .map(|(p, _)| *p)
                        .collect()
                })
                .unwrap_or_default();
            if let Err(e) = self.inner.directory.claim(&ready).await {
                tracing::warn!(error = %e, "cannot refresh the owner directory");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                // Claim soon after a partition becomes ready, not only every period.
                _ = tokio::time::sleep(if ready.len() < self.owned_partitions().len() { Duration::from_millis(200) } else { period }) => {}
            }
        }
    }
}
