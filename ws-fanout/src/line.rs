//! One room's event line on this node: the single place that decides what a subscriber sees
//! next, whichever way an event arrived.
//!
//! The log is the source of truth and arrives complete and in order from where the node's tail
//! started; the fast channel (Redis pub/sub from the commands tier) arrives sooner but may lose
//! or reorder events. So an event is delivered only when it is exactly `head + 1`; anything
//! beyond a gap waits in `pending` until the log fills the gap, and anything at or below `head`
//! was delivered already. Dropping a pending event is always safe: the log brings it again.

use std::collections::{BTreeMap, VecDeque};

/// A frame as sockets receive it, serialized once: every socket's write takes a reference to the
/// same bytes (a count, not a copy), which matters at 100 sockets per room.
pub type Frame = axum::extract::ws::Utf8Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Log,
    Fast,
}

/// The outcome of offering one event.
#[derive(Debug)]
pub struct Offer {
    /// Events now deliverable, in order.
    pub released: Vec<(i64, Frame)>,
    /// The log went past the head the node had taken from the snapshot: subscribers following
    /// the old head have a gap and must resync.
    pub jumped: bool,
}

/// What a subscriber resuming after `since_seq` gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Backlog {
    /// The node does not know where the room stands yet (no event of it since the tail
    /// started); establish the head from the snapshot first.
    Unknown,
    /// The missing events, oldest first (empty when the subscriber is up to date).
    Events(Vec<(i64, Frame)>),
    /// Older than what the node keeps: the client must page history and subscribe again.
    TooOld { oldest_kept: i64 },
    /// The client claims events the room does not have.
    Ahead { head: i64 },
}

#[derive(Debug)]
pub struct RoomLine {
    /// Last seq delivered; meaningful once `known`.
    head: i64,
    known: bool,
    /// The last delivered events, contiguous and ending at `head`.
    recent: VecDeque<(i64, Frame)>,
    /// Fast-channel events beyond a gap.
    pending: BTreeMap<i64, Frame>,
    keep: usize,
}

impl RoomLine {
    pub fn new(keep: usize) -> Self {
        Self {
            head: 0,
            known: false,
            recent: VecDeque::new(),
            pending: BTreeMap::new(),
            keep: keep.max(1),
        }
    }

    pub fn head(&self) -> Option<i64> {
        self.known.then_some(self.head)
    }

    /// Sets the head of a room the log has not shown yet (from the projector's snapshot).
    pub fn establish(&mut self, head: i64) {
        if !self.known {
            self.known = true;
            self.head = head;
            self.pending.retain(|seq, _| *seq > head);
        }
    }

    /// Offers one event; returns what became deliverable, in order, and whether the line had
    /// to jump (see [`Offer::jumped`]).
    pub fn offer(&mut self, seq: i64, frame: Frame, origin: Origin) -> Offer {
        let mut jumped = false;
        if self.known && origin == Origin::Log && seq > self.head + 1 {
            // The log itself never skips a seq, so the head came from a stale snapshot: the
            // log wins, and whoever followed the old head must resync.
            jumped = true;
            self.head = seq - 1;
            self.recent.clear();
            self.pending.retain(|s, _| *s >= seq);
        }
        Offer {
            released: self.release(seq, frame, origin),
            jumped,
        }
    }

    fn release(&mut self, seq: i64, frame: Frame, origin: Origin) -> Vec<(i64, Frame)> {
        if !self.known {
            match origin {
                // The tail reads every record from its start on, so the room's first record
                // there follows whatever came before it.
                Origin::Log => {
                    self.known = true;
                    self.head = seq - 1;
                }
                // The first record of a room is certainly its first event; anything else waits
                // for the log to say where the room stands.
                Origin::Fast if seq == 1 => {
                    self.known = true;
                    self.head = 0;
                }
                Origin::Fast => {
                    self.hold(seq, frame);
                    return Vec::new();
                }
            }
        }
        if seq <= self.head {
            return Vec::new();
        }
        if seq > self.head + 1 {
            // Only a fast copy can be early (the log case jumped above): it waits for the log.
            self.hold(seq, frame);
            return Vec::new();
        }
        let mut out = vec![(seq, frame)];
        self.head = seq;
        while let Some(frame) = self.pending.remove(&(self.head + 1)) {
            self.head += 1;
            out.push((self.head, frame));
        }
        self.pending.retain(|s, _| *s > self.head);
        out
    }

    fn hold(&mut self, seq: i64, frame: Frame) {
        self.pending.insert(seq, frame);
        // Bounded: the log brings every event again, so the newest can go.
        while self.pending.len() > self.keep {
            self.pending.pop_last();
        }
    }

    /// Remembers delivered events for resumes (called with what `offer` returned).
    pub fn remember(&mut self, delivered: &[(i64, Frame)]) {
        for (seq, frame) in delivered {
            self.recent.push_back((*seq, frame.clone()));
        }
        while self.recent.len() > self.keep {
            self.recent.pop_front();
        }
    }

    /// Forgets the kept events (memory pressure); resumes then need history.
    pub fn forget(&mut self) {
        self.recent.clear();
        self.pending.clear();
    }

    pub fn kept(&self) -> usize {
        self.recent.len() + self.pending.len()
    }

    pub fn backlog(&self, since: i64) -> Backlog {
        if !self.known {
            return Backlog::Unknown;
        }
        if since > self.head {
            return Backlog::Ahead { head: self.head };
        }
        let oldest_kept = self.head - self.recent.len() as i64 + 1;
        if since + 1 < oldest_kept {
            return Backlog::TooOld { oldest_kept };
        }
        Backlog::Events(
            self.recent
                .iter()
                .filter(|(seq, _)| *seq > since)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(seq: i64) -> Frame {
        Frame::from(format!("e{seq}"))
    }

    fn seqs(v: &[(i64, Frame)]) -> Vec<i64> {
        v.iter().map(|(s, _)| *s).collect()
    }

    fn offer(line: &mut RoomLine, seq: i64, origin: Origin) -> Vec<i64> {
        let out = line.offer(seq, f(seq), origin).released;
        line.remember(&out);
        seqs(&out)
    }

    #[test]
    fn the_log_alone_delivers_in_order_once() {
        let mut line = RoomLine::new(10);
        assert_eq!(offer(&mut line, 5, Origin::Log), vec![5]);
        assert_eq!(offer(&mut line, 6, Origin::Log), vec![6]);
        assert_eq!(offer(&mut line, 6, Origin::Log), Vec::<i64>::new());
        assert_eq!(line.head(), Some(6));
    }

    #[test]
    fn a_stale_snapshot_gives_way_to_the_log() {
        let mut line = RoomLine::new(10);
        line.establish(3);
        let out = line.offer(7, f(7), Origin::Log);
        assert!(out.jumped);
        assert_eq!(seqs(&out.released), vec![7]);
        line.remember(&out.released);
        assert_eq!(line.backlog(5), Backlog::TooOld { oldest_kept: 7 });
        assert!(!line.offer(8, f(8), Origin::Log).jumped);
    }

    #[test]
    fn fast_events_beyond_a_gap_wait_for_the_log() {
        let mut line = RoomLine::new(10);
        line.establish(3);
        assert_eq!(offer(&mut line, 4, Origin::Fast), vec![4]);
        // 5 lost on the fast channel; 6 and 7 wait.
        assert_eq!(offer(&mut line, 6, Origin::Fast), Vec::<i64>::new());
        assert_eq!(offer(&mut line, 7, Origin::Fast), Vec::<i64>::new());
        // The log repeats 4 (skipped), then brings 5, which releases 6 and 7.
        assert_eq!(offer(&mut line, 4, Origin::Log), Vec::<i64>::new());
        assert_eq!(offer(&mut line, 5, Origin::Log), vec![5, 6, 7]);
        assert_eq!(offer(&mut line, 6, Origin::Log), Vec::<i64>::new());
        assert_eq!(offer(&mut line, 7, Origin::Log), Vec::<i64>::new());
        assert_eq!(offer(&mut line, 8, Origin::Log), vec![8]);
    }

    #[test]
    fn an_unknown_room_trusts_only_the_log_or_seq_one() {
        let mut line = RoomLine::new(10);
        assert_eq!(offer(&mut line, 12, Origin::Fast), Vec::<i64>::new());
        assert_eq!(line.head(), None);
        assert_eq!(offer(&mut line, 11, Origin::Log), vec![11, 12]);
        let mut fresh = RoomLine::new(10);
        assert_eq!(offer(&mut fresh, 1, Origin::Fast), vec![1]);
    }

    #[test]
    fn backlog_serves_resumes_from_what_is_kept() {
        let mut line = RoomLine::new(3);
        assert_eq!(line.backlog(0), Backlog::Unknown);
        line.establish(10);
        assert_eq!(line.backlog(10), Backlog::Events(vec![]));
        assert_eq!(line.backlog(11), Backlog::Ahead { head: 10 });
        assert_eq!(line.backlog(9), Backlog::TooOld { oldest_kept: 11 });
        for seq in 11..=15 {
            offer(&mut line, seq, Origin::Log);
        }
        // Keeps 13, 14, 15.
        let Backlog::Events(events) = line.backlog(12) else {
            panic!("expected events")
        };
        assert_eq!(seqs(&events), vec![13, 14, 15]);
        assert_eq!(line.backlog(11), Backlog::TooOld { oldest_kept: 13 });
        line.forget();
        assert_eq!(line.backlog(14), Backlog::TooOld { oldest_kept: 16 });
        assert_eq!(line.backlog(15), Backlog::Events(vec![]));
    }

    #[test]
    fn pending_is_bounded() {
        let mut line = RoomLine::new(2);
        line.establish(0);
        for seq in 3..10 {
            offer(&mut line, seq, Origin::Fast);
        }
        assert!(line.kept() <= 2);
        assert_eq!(offer(&mut line, 1, Origin::Log), vec![1]);
        assert_eq!(offer(&mut line, 2, Origin::Log), vec![2, 3, 4]);
    }
}
