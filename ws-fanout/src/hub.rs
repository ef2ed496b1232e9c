//! Rooms and their subscribers on this node.
//!
//! Every event, from the log tail or the fast channel, goes through its room's [`RoomLine`]
//! under the room's lock, and what the line releases is pushed to each subscriber's queue in
//! the same critical section; a subscribe takes the same lock to send its backlog and join. So
//! a subscriber's stream per room is one contiguous, ordered run: nothing between its backlog
//! and the first live event can slip by or arrive twice.
//!
//! Queues are bounded. A push into a full queue marks the socket as fallen behind and drops it
//! from the room; the socket then tells its client to resync and closes. Nothing is skipped
//! silently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::line::{Backlog, Frame, Origin, RoomLine};
use crate::metrics::Metrics;

const SHARDS: usize = 32;

/// The node's end of one socket.
#[derive(Clone)]
pub struct Outlet {
    pub id: u64,
    pub user_id: String,
    tx: mpsc::Sender<Frame>,
    /// Cancelled when a push found the queue full.
    pub behind: CancellationToken,
}

impl Outlet {
    pub fn new(id: u64, user_id: String, capacity: usize) -> (Self, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Self {
                id,
                user_id,
                tx,
                behind: CancellationToken::new(),
            },
            rx,
        )
    }

    /// Queues an ephemeral frame (typing, presence): dropped, not marking the socket, when the
    /// queue is full, because it is no part of the room's ordered stream.
    pub fn push_ephemeral(&self, frame: Frame) -> bool {
        self.tx.try_send(frame).is_ok()
    }

    /// Queues a frame; false (and `behind` cancelled) when the socket cannot take it.
    pub fn push(&self, frame: Frame) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.behind.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

struct Room {
    line: RoomLine,
    subscribers: HashMap<u64, Outlet>,
    touched: Instant,
    facts: RoomFacts,
}

/// What the log showed about who may read a room since the tail started. Fresher than the read
/// model (a user who just joined can subscribe at once), and complete when the tail saw the
/// room's creation.
#[derive(Default)]
struct RoomFacts {
    /// The tail saw seq 1: everything about the room is known here.
    complete: bool,
    public: Option<bool>,
    /// Each user's standing and the seq of the event that said so (copies of events arrive
    /// from the log and the fast channel in different orders; the later seq wins).
    members: HashMap<String, (Standing, i64)>,
}

/// A user's standing in a room, as the log last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Member,
    Left,
    Banned,
}

/// Who may read a room, as far as the log has shown this node (see `crate::access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Banned,
    Invisible,
}

/// What a subscribe did.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// Subscribed; the backlog (this many events) is queued ahead of live events. `head` is
    /// where the room stands on this node, when known.
    Live { backlog: usize, head: Option<i64> },
    /// The node has no position for the room yet: establish it and try again.
    Unknown,
    /// The gap is older than the node keeps.
    TooOld { oldest_kept: i64 },
    /// `since_seq` is past the room's last event.
    Ahead { head: i64 },
    /// The backlog did not fit in the socket's queue.
    Behind,
}

pub struct Hub {
    shards: Vec<Mutex<HashMap<String, Room>>>,
    keep: usize,
    /// Events kept over all rooms, and the budget past which idle rooms forget theirs.
    kept: AtomicUsize,
    budget: usize,
    /// Per partition of the room topic: the next offset the tail has fully handed to the hub.
    positions: Vec<AtomicI64>,
    /// Per partition: where the log ended when the tail started. Until the tail is there the
    /// node cannot place new rooms, so it does not take sockets (readiness).
    targets: Vec<AtomicI64>,
    metrics: Metrics,
}

impl Hub {
    pub fn new(keep: usize, budget: usize, partitions: usize, metrics: Metrics) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            keep,
            kept: AtomicUsize::new(0),
            budget,
            positions: (0..partitions).map(|_| AtomicI64::new(-1)).collect(),
            targets: (0..partitions).map(|_| AtomicI64::new(i64::MAX)).collect(),
            metrics,
        }
    }

    fn shard(&self, room: &str) -> MutexGuard<'_, HashMap<String, Room>> {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in room.as_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        // A poisoned shard only means a panic elsewhere mid-update of plain data; keep serving.
        match self.shards[(h as usize) % SHARDS].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn new_room(&self) -> Room {
        Room {
            line: RoomLine::new(self.keep),
            subscribers: HashMap::new(),
            touched: Instant::now(),
            facts: RoomFacts::default(),
        }
    }

    /// Hands one event to its room; returns how many sockets it was pushed to.
    pub fn offer(&self, room_id: &str, seq: i64, frame: Frame, origin: Origin) -> usize {
        let mut shard = self.shard(room_id);
        let room = match shard.get_mut(room_id) {
            Some(r) => r,
            // Fast copies matter only where someone listens; the log keeps every room's place.
            None if origin == Origin::Fast => return 0,
            None => shard
                .entry(room_id.to_string())
                .or_insert_with(|| self.new_room()),
        };
        let before = room.line.kept();
        let offer = room.line.offer(seq, frame, origin);
        if offer.jumped {
            self.metrics.log_gaps.inc();
            let resync = Frame::from(crate::protocol::resync_frame(
                room_id,
                "this node's position for the room was stale; page history and subscribe again",
            ));
            for (_, outlet) in room.subscribers.drain() {
                outlet.push(resync.clone());
            }
        }
        let released = offer.released;
        room.line.remember(&released);
        room.touched = Instant::now();
        let after = room.line.kept();
        self.account(before, after);
        if released.is_empty() {
            return 0;
        }
        let label = match origin {
            Origin::Log => "log",
            Origin::Fast => "fast",
        };
        self.metrics
            .released
            .with_label_values(&[label])
            .inc_by(released.len() as u64);
        let mut pushed = 0;
        let mut fallen = Vec::new();
        for (id, outlet) in &room.subscribers {
            for (_, frame) in &released {
                if !outlet.push(frame.clone()) {
                    fallen.push(*id);
                    break;
                }
                pushed += 1;
            }
        }
        for id in fallen {
            room.subscribers.remove(&id);
            self.metrics.fallen_behind.inc();
        }
        pushed
    }

    fn account(&self, before: usize, after: usize) {
        if after >= before {
            self.kept.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.kept.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Subscribes `outlet` to `room_id` after `since` (None: live only). On success the
    /// `greeting` (given the room's head here) is queued first, then the backlog, then live
    /// events, all under the room's lock.
    pub fn join(
        &self,
        room_id: &str,
        since: Option<i64>,
        outlet: &Outlet,
        greeting: impl FnOnce(Option<i64>) -> Frame,
    ) -> Joined {
        let mut shard = self.shard(room_id);
        let room = shard
            .entry(room_id.to_string())
            .or_insert_with(|| self.new_room());
        let head = room.line.head();
        let backlog = match since {
            None => Vec::new(),
            Some(since) => match room.line.backlog(since) {
                Backlog::Unknown => return Joined::Unknown,
                Backlog::TooOld { oldest_kept } => return Joined::TooOld { oldest_kept },
                Backlog::Ahead { head } => return Joined::Ahead { head },
                Backlog::Events(events) => events,
            },
        };
        if !outlet.push(greeting(head)) {
            return Joined::Behind;
        }
        for (_, frame) in &backlog {
            if !outlet.push(frame.clone()) {
                return Joined::Behind;
            }
        }
        room.subscribers.insert(outlet.id, outlet.clone());
        Joined::Live {
            backlog: backlog.len(),
            head,
        }
    }

    /// Sets the head of a room the log has not shown since the tail started.
    pub fn establish(&self, room_id: &str, head: i64) {
        let mut shard = self.shard(room_id);
        shard
            .entry(room_id.to_string())
            .or_insert_with(|| self.new_room())
            .line
            .establish(head);
    }

    pub fn leave(&self, room_id: &str, socket: u64) {
        if let Some(room) = self.shard(room_id).get_mut(room_id) {
            room.subscribers.remove(&socket);
        }
    }

    /// Drops every subscription of `user_id` to `room_id` (left or banned); returns the outlets.
    pub fn revoke(&self, room_id: &str, user_id: &str) -> Vec<Outlet> {
        let Some(room) = self.shard(room_id).get_mut(room_id).map(|r| {
            let ids: Vec<u64> = r
                .subscribers
                .iter()
                .filter(|(_, o)| o.user_id == user_id)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| r.subscribers.remove(&id))
                .collect::<Vec<_>>()
        }) else {
            return Vec::new();
        };
        room
    }

    /// Shows an ephemeral frame to the room's subscribers here, except `skip_user`'s own sockets
    /// and the sockets in `seen` (one frame per socket when a caller covers several rooms).
    pub fn broadcast(
        &self,
        room_id: &str,
        frame: &Frame,
        skip_user: &str,
        seen: &mut std::collections::HashSet<u64>,
    ) -> usize {
        let shard = self.shard(room_id);
        let Some(room) = shard.get(room_id) else {
            return 0;
        };
        let mut shown = 0;
        for (id, outlet) in &room.subscribers {
            if outlet.user_id != skip_user
                && seen.insert(*id)
                && outlet.push_ephemeral(frame.clone())
            {
                shown += 1;
            }
        }
        shown
    }

    /// Rooms with subscribers here where the log showed `user_id` as a member (fresher than
    /// the read model for someone who just joined).
    pub fn rooms_with_member(&self, user_id: &str) -> Vec<String> {
        let mut rooms = Vec::new();
        for shard in &self.shards {
            let shard = match shard.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for (id, room) in shard.iter() {
                if !room.subscribers.is_empty()
                    && room.facts.members.get(user_id).map(|(s, _)| *s) == Some(Standing::Member)
                {
                    rooms.push(id.clone());
                }
            }
        }
        rooms
    }

    /// The user's standing in the room as far as the log showed it since the tail started.
    pub fn standing(&self, room_id: &str, user_id: &str) -> Option<Standing> {
        let shard = self.shard(room_id);
        let facts = &shard.get(room_id)?.facts;
        match facts.members.get(user_id) {
            Some((s, _)) => Some(*s),
            None if facts.complete => Some(Standing::Left),
            None => None,
        }
    }

    /// Records a membership change (from the log or an acknowledged fast copy) unless a later
    /// event about the same user was recorded already.
    pub fn note_standing(&self, room_id: &str, user_id: &str, standing: Standing, seq: i64) {
        if let Some(room) = self.shard(room_id).get_mut(room_id) {
            let entry = room
                .facts
                .members
                .entry(user_id.to_string())
                .or_insert((standing, seq));
            if seq >= entry.1 {
                *entry = (standing, seq);
            }
        }
    }

    /// Records the room's visibility (creation or update); `created` when this is seq 1.
    pub fn note_room(&self, room_id: &str, public: bool, created: bool) {
        if let Some(room) = self.shard(room_id).get_mut(room_id) {
            room.facts.public = Some(public);
            room.facts.complete |= created;
        }
    }

    /// Who may read, when the log alone can tell: members always; for a room whose whole
    /// history the tail holds, also banned (no) and public / private for everyone else.
    pub fn verdict(&self, room_id: &str, user_id: &str) -> Option<Verdict> {
        let shard = self.shard(room_id);
        let facts = &shard.get(room_id)?.facts;
        match facts.members.get(user_id).map(|(s, _)| *s) {
            Some(Standing::Member) => Some(Verdict::Allow),
            Some(Standing::Banned) => Some(Verdict::Banned),
            _ if facts.complete => match facts.public {
                Some(true) => Some(Verdict::Allow),
                _ => Some(Verdict::Invisible),
            },
            _ => None,
        }
    }

    pub fn position(&self, partition: usize) -> i64 {
        self.positions
            .get(partition)
            .map(|p| p.load(Ordering::Acquire))
            .unwrap_or(-1)
    }

    /// Waits until the tail has handed over everything before `offset` of `partition`.
    pub async fn reach(
        &self,
        partition: i32,
        offset: i64,
        within: std::time::Duration,
    ) -> Result<(), crate::FanoutError> {
        let deadline = Instant::now() + within;
        while self.position(partition as usize) < offset {
            if Instant::now() >= deadline {
                return Err(crate::FanoutError::Unavailable(
                    "this node is still catching up with the log; try again shortly".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    }

    pub fn set_position(&self, partition: usize, next: i64) {
        if let Some(p) = self.positions.get(partition) {
            p.store(next, Ordering::Release);
        }
    }

    pub fn set_target(&self, partition: usize, end: i64) {
        if let Some(t) = self.targets.get(partition) {
            t.store(end, Ordering::Release);
        }
    }

    /// The tail has read, in every partition, what the log held when it started.
    pub fn caught_up(&self) -> bool {
        self.targets
            .iter()
            .enumerate()
            .all(|(p, t)| self.position(p) >= t.load(Ordering::Acquire))
    }

    pub fn partitions(&self) -> usize {
        self.positions.len()
    }

    pub fn kept(&self) -> usize {
        self.kept.load(Ordering::Relaxed)
    }

    /// Over budget: rooms nobody here listens to forget their kept events, least recently
    /// active first, until a quarter of the budget is free. Their resumes then need history.
    pub fn trim(&self) {
        if self.kept() <= self.budget {
            return;
        }
        let mut idle: Vec<(Instant, usize, String)> = Vec::new();
        for shard in &self.shards {
            let shard = match shard.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for (id, room) in shard.iter() {
                if room.subscribers.is_empty() && room.line.kept() > 0 {
                    idle.push((room.touched, room.line.kept(), id.clone()));
                }
            }
        }
        idle.sort();
        let target = self.budget - self.budget / 4;
        for (_, _, id) in idle {
            if self.kept() <= target {
                break;
            }
            if let Some(room) = self.shard(&id).get_mut(&id)
                && room.subscribers.is_empty()
            {
                let before = room.line.kept();
                room.line.forget();
                self.account(before, 0);
            }
        }
    }
}
