//! Rooms and their subscribers on this node.
//!
//! Every event, from the log tail or the fast channel, goes through its room's [`RoomLine`]
//! under the room's lock, and what the line releases is pushed to each subscriber's queue in
//! the same critical section; a subscribe takes the same lock to send its backlog and join. So
//! a subscriber's stream per room is one contiguous, ordered run: nothing between its backlog
//! and the first live event can slip by or arrive twice.
//!
//! Access ends in the same order: an event that takes a reader's access away (a ban, a leave,
//! a room turning private) is recorded as a fact when any copy of it arrives, so no new
//! subscribe gets in after it, and ends the affected subscriptions when it is released, right
//! after they were sent the event itself.
//!
//! Queues are bounded. A push into a full queue marks the socket as fallen behind and drops it
//! from the room; the socket then tells its client to resync and closes. Nothing is skipped
//! silently.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::line::{Backlog, Frame, Origin, RoomLine};
use crate::metrics::Metrics;

const SHARDS: usize = 32;

/// The longest a caller waits for the tail in [`Hub::reach`], progress or not.
const REACH_AT_MOST: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// Access that ends when the event of that seq is released.
    endings: BTreeMap<i64, Ending>,
}

/// What an event says about who may read its room (see [`Hub::offer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    Created { owner: String, public: bool },
    Visibility { public: bool },
    Standing { user: String, standing: Standing },
}

/// Subscriptions an event ends.
#[derive(Debug)]
enum Ending {
    /// The user left or was banned.
    User(String),
    /// The room turned private: everyone who is not a member.
    NonMembers,
}

impl Room {
    fn record(&mut self, seq: i64, fact: Fact) {
        let unreleased = self.line.head().is_none_or(|head| seq > head);
        match fact {
            Fact::Created { owner, public } => {
                self.note_visibility(seq, public);
                self.facts.complete |= seq == 1;
                self.note_standing(owner, Standing::Member, seq);
            }
            Fact::Visibility { public } => {
                self.note_visibility(seq, public);
                if !public && unreleased {
                    self.endings.insert(seq, Ending::NonMembers);
                }
            }
            Fact::Standing { user, standing } => {
                if standing != Standing::Member && unreleased {
                    self.endings.insert(seq, Ending::User(user.clone()));
                }
                self.note_standing(user, standing, seq);
            }
        }
    }

    fn note_visibility(&mut self, seq: i64, public: bool) {
        if seq >= self.facts.public_seq {
            self.facts.public = Some(public);
            self.facts.public_seq = seq;
        }
    }

    /// Records a standing unless a later event about the same user was recorded already
    /// (copies arrive from the log and the fast channel in different orders).
    fn note_standing(&mut self, user: String, standing: Standing, seq: i64) {
        let entry = self.facts.members.entry(user).or_insert((standing, seq));
        if seq >= entry.1 {
            *entry = (standing, seq);
        }
    }

    fn is_member(&self, user: &str) -> bool {
        self.facts.members.get(user).map(|(s, _)| *s) == Some(Standing::Member)
    }

    /// Whether `user` may be added as a subscriber, by what the log showed: a subscribe's
    /// access check ran before this moment, and a ban or a turn to private may have come since.
    fn admits(&self, user: &str) -> Result<(), Verdict> {
        let standing = self.facts.members.get(user).map(|(s, _)| *s);
        match standing {
            Some(Standing::Member) => Ok(()),
            Some(Standing::Banned) => Err(Verdict::Banned),
            _ if self.facts.public == Some(false)
                && (standing.is_some() || self.facts.complete) =>
            {
                Err(Verdict::Invisible)
            }
            _ => Ok(()),
        }
    }

    /// Ends the subscriptions `ending` names, each told why.
    fn end(&mut self, room_id: &str, ending: &Ending) {
        let ended: Vec<u64> = self
            .subscribers
            .iter()
            .filter(|(_, outlet)| match ending {
                Ending::User(user) => outlet.user_id == *user,
                Ending::NonMembers => !self.is_member(&outlet.user_id),
            })
            .map(|(id, _)| *id)
            .collect();
        let reason = match ending {
            Ending::User(_) => "you no longer receive this room; subscribe again if it is public",
            Ending::NonMembers => "the room turned private and you are not a member",
        };
        for id in ended {
            if let Some(outlet) = self.subscribers.remove(&id) {
                outlet.push(Frame::from(crate::protocol::error_frame(
                    "access_revoked",
                    reason,
                    Some(room_id),
                )));
            }
        }
    }
}

/// What the log showed about who may read a room since the tail started. Fresher than the read
/// model (a user who just joined can subscribe at once), and complete when the tail saw the
/// room's creation.
#[derive(Default)]
struct RoomFacts {
    /// The tail saw seq 1: everything about the room is known here.
    complete: bool,
    public: Option<bool>,
    /// The seq of the event that set `public`.
    public_seq: i64,
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
    /// The log showed, after the access check, that the user may not read the room.
    Refused(Verdict),
}

pub struct Hub {
    shards: Vec<Mutex<HashMap<String, Room>>>,
    keep: usize,
    /// Events kept over all rooms, and the budget past which idle rooms forget theirs.
    kept: AtomicUsize,
    budget: usize,
    /// Per partition of the room topic: the next offset the tail has fully handed to the hub.
    positions: Vec<AtomicI64>,
    /// Per partition: where the log ended when the tail started reading it (-1: not read).
    /// Until the tail is there the node cannot place the partition's rooms (readiness).
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
            targets: (0..partitions).map(|_| AtomicI64::new(-1)).collect(),
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

    /// Every shard, locked in turn (for the walks over all rooms).
    fn every_shard(&self) -> impl Iterator<Item = MutexGuard<'_, HashMap<String, Room>>> {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn new_room(&self) -> Room {
        Room {
            line: RoomLine::new(self.keep),
            subscribers: HashMap::new(),
            touched: Instant::now(),
            facts: RoomFacts::default(),
            endings: BTreeMap::new(),
        }
    }

    /// Hands one event to its room, with what it says about access (`fact`); returns how many
    /// sockets it was pushed to.
    pub fn offer(
        &self,
        room_id: &str,
        seq: i64,
        frame: Frame,
        origin: Origin,
        fact: Option<Fact>,
    ) -> usize {
        let mut shard = self.shard(room_id);
        let room = match shard.get_mut(room_id) {
            Some(r) => r,
            // Fast copies matter only where someone listens; the log keeps every room's place.
            None if origin == Origin::Fast => return 0,
            None => shard
                .entry(room_id.to_string())
                .or_insert_with(|| self.new_room()),
        };
        if let Some(fact) = fact {
            room.record(seq, fact);
        }
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
        // Endings of events this node skipped (a jump past them) lapse.
        room.endings = room.endings.split_off(&released[0].0);
        let label = match origin {
            Origin::Log => "log",
            Origin::Fast => "fast",
        };
        self.metrics
            .released
            .with_label_values(&[label])
            .inc_by(released.len() as u64);
        let mut pushed = 0;
        for (seq, frame) in &released {
            let mut fallen = Vec::new();
            for (id, outlet) in &room.subscribers {
                if outlet.push(frame.clone()) {
                    pushed += 1;
                } else {
                    fallen.push(*id);
                }
            }
            for id in fallen {
                room.subscribers.remove(&id);
                self.metrics.fallen_behind.inc();
            }
            if let Some(ending) = room.endings.remove(seq) {
                room.end(room_id, &ending);
            }
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
        if let Err(verdict) = room.admits(&outlet.user_id) {
            return Joined::Refused(verdict);
        }
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
        for shard in self.every_shard() {
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

    /// Waits until the tail has handed over everything before `offset` of `partition`, as long
    /// as it makes progress: `within` without a record handed over is the limit, not the whole
    /// wait, because a partition the node just began to read (`crate::interest`) may have its
    /// warm records to read first, which a busy machine takes a while for.
    pub async fn reach(
        &self,
        partition: i32,
        offset: i64,
        within: std::time::Duration,
    ) -> Result<(), crate::FanoutError> {
        let started = Instant::now();
        let mut deadline = started + within;
        let mut seen = self.position(partition as usize);
        while seen < offset {
            let now = self.position(partition as usize);
            if now > seen && started.elapsed() < REACH_AT_MOST {
                seen = now;
                deadline = Instant::now() + within;
                continue;
            }
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

    /// The tail has read, in every partition it reads, what the log held when it started
    /// reading it.
    pub fn caught_up(&self) -> bool {
        self.targets
            .iter()
            .enumerate()
            .all(|(p, t)| self.position(p) >= t.load(Ordering::Acquire))
    }

    pub fn partitions(&self) -> usize {
        self.positions.len()
    }

    /// Forgets the rooms of a partition the tail stops reading (`crate::interest`): their
    /// lines would go stale, and reading the partition again starts somewhere else. Rooms with
    /// subscribers stay (the interest keeps their partition, so none should): should the
    /// partition be read again from a later place, their lines jump and the subscribers are
    /// told to resync, as for any stale head.
    pub fn forget_partition(&self, partition: i32) {
        let partitions = self.partitions() as i32;
        for mut shard in self.every_shard() {
            shard.retain(|id, room| {
                if !room.subscribers.is_empty()
                    || schemas::partition::partition_for(id, partitions) != partition
                {
                    return true;
                }
                self.account(room.line.kept(), 0);
                false
            });
        }
        self.set_position(partition as usize, -1);
        self.set_target(partition as usize, -1);
    }

    /// The rooms with subscribers here.
    pub fn listened(&self) -> HashSet<String> {
        let mut rooms = HashSet::new();
        for shard in self.every_shard() {
            rooms.extend(
                shard
                    .iter()
                    .filter(|(_, room)| !room.subscribers.is_empty())
                    .map(|(id, _)| id.clone()),
            );
        }
        rooms
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
        for shard in self.every_shard() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        let metrics = Metrics::register(&prometheus::Registry::new()).expect("metrics");
        Hub::new(64, 10_000, 1, metrics)
    }

    fn frame(seq: i64) -> Frame {
        Frame::from(format!("event {seq}"))
    }

    fn drain(rx: &mut mpsc::Receiver<Frame>) -> Vec<String> {
        let mut frames = Vec::new();
        while let Ok(f) = rx.try_recv() {
            let text = f.as_str();
            frames.push(if text.contains("access_revoked") {
                "revoked".to_string()
            } else {
                text.to_string()
            });
        }
        frames
    }

    fn standing(user: &str, standing: Standing) -> Option<Fact> {
        Some(Fact::Standing {
            user: user.into(),
            standing,
        })
    }

    /// A room of seqs 1-2 (created public by "owner"), with "eve" subscribed.
    fn room_with_eve(hub: &Hub) -> mpsc::Receiver<Frame> {
        let created = Some(Fact::Created {
            owner: "owner".into(),
            public: true,
        });
        hub.offer("r", 1, frame(1), Origin::Log, created);
        hub.offer(
            "r",
            2,
            frame(2),
            Origin::Log,
            standing("eve", Standing::Member),
        );
        let (eve, rx) = Outlet::new(1, "eve".into(), 64);
        let greeting = |_| Frame::from_static("hello");
        assert!(matches!(
            hub.join("r", Some(2), &eve, greeting),
            Joined::Live { .. }
        ));
        rx
    }

    #[test]
    fn a_ban_arriving_first_by_the_fast_channel_ends_the_stream_right_after_it() {
        let hub = hub();
        let mut rx = room_with_eve(&hub);
        // The ban (seq 4) is fast and early: seq 3 is still missing, so nothing is released.
        hub.offer(
            "r",
            4,
            frame(4),
            Origin::Fast,
            standing("eve", Standing::Banned),
        );
        assert_eq!(drain(&mut rx), ["hello"]);
        // A new subscribe of hers after the ban was recorded is refused, whatever the check said.
        let (again, _rx2) = Outlet::new(2, "eve".into(), 64);
        let joined = hub.join("r", Some(2), &again, |_| Frame::from_static("hello"));
        assert_eq!(joined, Joined::Refused(Verdict::Banned));
        // Seq 3 releases 3 and 4: she sees both, then the revocation, then nothing.
        hub.offer("r", 3, frame(3), Origin::Log, None);
        hub.offer("r", 5, frame(5), Origin::Log, None);
        assert_eq!(drain(&mut rx), ["event 3", "event 4", "revoked"]);
        // The log's copy of the ban changes nothing more.
        hub.offer(
            "r",
            4,
            frame(4),
            Origin::Log,
            standing("eve", Standing::Banned),
        );
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn a_room_turning_private_keeps_its_members_and_drops_everyone_else() {
        let hub = hub();
        let mut member = room_with_eve(&hub);
        let (visitor, mut visitor_rx) = Outlet::new(3, "visitor".into(), 64);
        let greeting = |_| Frame::from_static("hello");
        assert!(matches!(
            hub.join("r", None, &visitor, greeting),
            Joined::Live { .. }
        ));
        let private = Some(Fact::Visibility { public: false });
        hub.offer("r", 3, frame(3), Origin::Fast, private);
        hub.offer("r", 4, frame(4), Origin::Log, None);
        assert_eq!(drain(&mut member), ["hello", "event 3", "event 4"]);
        assert_eq!(drain(&mut visitor_rx), ["hello", "event 3", "revoked"]);
        let (back, _rx) = Outlet::new(4, "visitor".into(), 64);
        let joined = hub.join("r", None, &back, |_| Frame::from_static("hello"));
        assert_eq!(joined, Joined::Refused(Verdict::Invisible));
    }
}
