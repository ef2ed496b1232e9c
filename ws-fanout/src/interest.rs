//! Interest routing: a node takes from the log and from the fast channel only the rooms it has
//! subscribers for, so the cost of a node follows its own sockets, and adding nodes adds
//! capacity instead of multiplying the reading (every node used to read every partition and
//! receive every room's fast copies).
//!
//! A subscribe or a poll first says which room it wants ([`Interest::want`], called by
//! `Access` before it answers for the room). The node then reads the room's partition of the
//! log, from the presence projector's checkpoint minus the warm records (as a node start used
//! to for every partition; see `tail.rs`), and subscribes to the room's fast channel. A sweep
//! every second lets go of rooms nobody here has listened to for `linger`, and of partitions
//! none of whose rooms is still wanted.
//!
//! Gap-free holds as before: a room's line only ever follows a contiguous stretch of its
//! partition. When the tail stops reading a partition it forgets that partition's rooms, and
//! it does so only if no `want` came in since the sweep let go of it
//! ([`Interest::release_if_unwanted`] holds the same lock as `want`); reading it again starts
//! from a fresh position, and the rooms are placed again from the snapshot, as at a node start.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// What the log tail is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogCommand {
    Read(i32),
    Release(i32),
}

/// What the fast channel is asked to do, per room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastCommand {
    Subscribe(String),
    Unsubscribe(String),
}

pub struct Interest {
    partitions: i32,
    linger: Duration,
    state: Mutex<State>,
    log: mpsc::UnboundedSender<LogCommand>,
    fast: mpsc::UnboundedSender<FastCommand>,
    metrics: Metrics,
}

#[derive(Default)]
struct State {
    /// Rooms whose fast channel is subscribed, and when a subscribe last wanted them or the
    /// sweep last saw them with subscribers.
    rooms: HashMap<String, Instant>,
    /// Partitions the tail was asked to read: those of `rooms`.
    reading: HashSet<i32>,
}

/// The receiving ends, for the log tail and the fast channel.
pub struct Commands {
    pub log: mpsc::UnboundedReceiver<LogCommand>,
    pub fast: mpsc::UnboundedReceiver<FastCommand>,
}

impl Interest {
    pub fn new(partitions: i32, linger: Duration, metrics: Metrics) -> (Self, Commands) {
        let (log, log_rx) = mpsc::unbounded_channel();
        let (fast, fast_rx) = mpsc::unbounded_channel();
        let interest = Self {
            partitions: partitions.max(1),
            linger,
            state: Mutex::default(),
            log,
            fast,
            metrics,
        };
        let commands = Commands {
            log: log_rx,
            fast: fast_rx,
        };
        (interest, commands)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain sets: a panic elsewhere mid-update leaves nothing half-done that matters.
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn partition_of(&self, room_id: &str) -> i32 {
        schemas::partition::partition_for(room_id, self.partitions)
    }

    /// Makes the node follow `room_id`: its partition of the log and its fast channel.
    pub fn want(&self, room_id: &str) {
        let partition = self.partition_of(room_id);
        let now = Instant::now();
        let mut state = self.lock();
        if state.reading.insert(partition) {
            // The receivers live as long as the node; a send fails only while it stops.
            let _ = self.log.send(LogCommand::Read(partition));
        }
        if state.rooms.insert(room_id.to_string(), now).is_none() {
            let _ = self.fast.send(FastCommand::Subscribe(room_id.to_string()));
        }
        self.show(&state);
    }

    /// Lets go of the rooms not in `listened` (the rooms with subscribers here now) that nobody
    /// wanted for `linger`, and of the partitions left without a room.
    pub fn sweep(&self, listened: &HashSet<String>) {
        let now = Instant::now();
        let mut state = self.lock();
        let mut dropped = Vec::new();
        state.rooms.retain(|room, last| {
            if listened.contains(room) {
                *last = now;
                true
            } else if now.duration_since(*last) < self.linger {
                true
            } else {
                dropped.push(room.clone());
                false
            }
        });
        for room in dropped {
            let _ = self.fast.send(FastCommand::Unsubscribe(room));
        }
        let wanted: HashSet<i32> = state
            .rooms
            .keys()
            .map(|room| self.partition_of(room))
            .collect();
        let released: Vec<i32> = state.reading.difference(&wanted).copied().collect();
        for partition in released {
            state.reading.remove(&partition);
            let _ = self.log.send(LogCommand::Release(partition));
        }
        self.show(&state);
    }

    /// Runs `release` (the tail forgetting the partition) unless a subscribe wanted the
    /// partition again since the sweep let go of it; under the lock `want` takes, so no want
    /// slips in between.
    pub fn release_if_unwanted(&self, partition: i32, release: impl FnOnce()) -> bool {
        let state = self.lock();
        if state.reading.contains(&partition) {
            return false;
        }
        release();
        true
    }

    /// Every room whose fast channel should be subscribed (after a reconnection).
    pub fn rooms(&self) -> Vec<String> {
        self.lock().rooms.keys().cloned().collect()
    }

    fn show(&self, state: &State) {
        self.metrics
            .interest_partitions
            .set(state.reading.len() as i64);
        self.metrics.interest_rooms.set(state.rooms.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(linger: Duration) -> (Interest, Commands) {
        let metrics = Metrics::register(&prometheus::Registry::new()).expect("metrics");
        Interest::new(12, linger, metrics)
    }

    fn drain<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(c);
        }
        out
    }

    /// Two rooms of one partition and one of another.
    fn rooms(interest: &Interest) -> (String, String, String) {
        let mut by_partition: HashMap<i32, Vec<String>> = HashMap::new();
        for i in 0.. {
            let room = format!("room-{i}");
            by_partition
                .entry(interest.partition_of(&room))
                .or_default()
                .push(room);
            let pair = by_partition.values().find(|r| r.len() >= 2).cloned();
            let single = by_partition.len() >= 2;
            if let (Some(pair), true) = (pair, single) {
                let p = interest.partition_of(&pair[0]);
                let other = by_partition
                    .iter()
                    .find(|(q, _)| **q != p)
                    .map(|(_, r)| r[0].clone())
                    .expect("another partition");
                return (pair[0].clone(), pair[1].clone(), other);
            }
        }
        unreachable!()
    }

    #[test]
    fn wanting_rooms_reads_each_partition_once_and_subscribes_each_room_once() {
        let (interest, mut commands) = interest(Duration::from_secs(60));
        let (a, b, c) = rooms(&interest);
        interest.want(&a);
        interest.want(&b);
        interest.want(&a);
        interest.want(&c);
        let log = drain(&mut commands.log);
        assert_eq!(
            log,
            [
                LogCommand::Read(interest.partition_of(&a)),
                LogCommand::Read(interest.partition_of(&c))
            ]
        );
        let fast = drain(&mut commands.fast);
        assert_eq!(
            fast,
            [
                FastCommand::Subscribe(a.clone()),
                FastCommand::Subscribe(b.clone()),
                FastCommand::Subscribe(c.clone())
            ]
        );
    }

    fn sorted(mut commands: Vec<FastCommand>) -> Vec<FastCommand> {
        commands.sort_by_key(|c| format!("{c:?}"));
        commands
    }

    #[test]
    fn the_sweep_keeps_what_is_listened_to_and_lets_go_of_the_rest_after_the_linger() {
        let (interest, mut commands) = interest(Duration::ZERO);
        let (a, b, c) = rooms(&interest);
        for room in [&a, &b, &c] {
            interest.want(room);
        }
        drain(&mut commands.log);
        drain(&mut commands.fast);
        // `a` still has subscribers: its partition stays, though `b` of the same one goes.
        interest.sweep(&HashSet::from([a.clone()]));
        assert_eq!(
            sorted(drain(&mut commands.fast)),
            sorted(vec![
                FastCommand::Unsubscribe(b.clone()),
                FastCommand::Unsubscribe(c.clone())
            ])
        );
        assert_eq!(
            drain(&mut commands.log),
            [LogCommand::Release(interest.partition_of(&c))]
        );
        // The tail forgets `c`'s partition, which nobody wanted since.
        let mut forgot = false;
        assert!(interest.release_if_unwanted(interest.partition_of(&c), || forgot = true));
        assert!(forgot);
        // Nobody listens any more: `a`'s partition goes too.
        interest.sweep(&HashSet::new());
        assert_eq!(
            drain(&mut commands.log),
            [LogCommand::Release(interest.partition_of(&a))]
        );
        assert!(interest.rooms().is_empty());
    }

    #[test]
    fn a_want_between_the_sweep_and_the_tail_keeps_the_partition() {
        let (interest, mut commands) = interest(Duration::ZERO);
        let (a, _, _) = rooms(&interest);
        interest.want(&a);
        interest.sweep(&HashSet::new());
        interest.want(&a);
        let p = interest.partition_of(&a);
        assert_eq!(
            drain(&mut commands.log),
            [
                LogCommand::Read(p),
                LogCommand::Release(p),
                LogCommand::Read(p)
            ]
        );
        // The tail, at the release: wanted again, so it keeps reading (and the read that
        // follows finds it reading already).
        assert!(!interest.release_if_unwanted(p, || panic!("released a wanted partition")));
    }

    #[test]
    fn rooms_stay_for_the_linger_after_their_last_subscriber() {
        let (interest, mut commands) = interest(Duration::from_secs(60));
        let (a, _, _) = rooms(&interest);
        interest.want(&a);
        drain(&mut commands.fast);
        interest.sweep(&HashSet::new());
        assert!(drain(&mut commands.fast).is_empty());
        assert!(drain(&mut commands.log).len() == 1);
        assert_eq!(interest.rooms(), [a]);
    }
}
