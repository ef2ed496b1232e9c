//! What one user may hold and send on a node: budgets (`platform::limits`) for client frames
//! and long polls, a bound on the user's open sockets and on each socket's subscriptions.
//! Every frame costs the node a parse and often a look-up; a subscription costs a place in the
//! room's fan-out; a socket costs memory, a task and a presence entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::FanoutError;
use crate::hub::Outlet;
use crate::line::Frame;

platform::budgets! {
    pub struct Budgets / Limits {
        /// Client frames of all of a user's sockets on this node.
        frames: 20.0, 100;
        /// Long polls, per user.
        polls: 20.0, 100;
    }
}

impl From<platform::limits::Exhausted> for FanoutError {
    fn from(e: platform::limits::Exhausted) -> Self {
        FanoutError::RateLimited {
            retry_after: e.retry_after,
        }
    }
}

/// The sockets of each user on this node: bounded per user, and where a frame for a user
/// (a relayed call signal) finds them.
#[derive(Default)]
pub struct SocketCounts {
    open: Mutex<HashMap<String, Vec<Outlet>>>,
}

/// A socket's place in [`SocketCounts`], given back when dropped.
pub struct SocketPlace {
    counts: Arc<SocketCounts>,
    user: String,
    id: u64,
}

impl SocketCounts {
    /// Takes a place for one more socket of `user`, unless the user holds `max` already.
    pub fn take(
        self: &Arc<Self>,
        user: &str,
        max: usize,
        outlet: &Outlet,
    ) -> Result<SocketPlace, FanoutError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let sockets = open.entry(user.to_string()).or_default();
        if sockets.len() >= max {
            return Err(FanoutError::TooMany(
                "too_many_sockets",
                format!("a user may hold {max} sockets on a node; close one first"),
            ));
        }
        sockets.push(outlet.clone());
        Ok(SocketPlace {
            counts: self.clone(),
            user: user.to_string(),
            id: outlet.id,
        })
    }

    /// Queues `frame` on every socket of `user` here; how many took it. Not part of a room's
    /// ordered stream, so a socket whose queue is full misses it rather than being cut off.
    pub fn deliver(&self, user: &str, frame: &Frame) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(user).map_or(0, |sockets| {
            sockets
                .iter()
                .filter(|o| o.push_ephemeral(frame.clone()))
                .count()
        })
    }
}

impl Drop for SocketPlace {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sockets) = open.get_mut(&self.user) {
            sockets.retain(|o| o.id != self.id);
            if sockets.is_empty() {
                open.remove(&self.user);
            }
        }
    }
}
