//! What one user may hold and send on a node: budgets (`platform::limits`) for client frames
//! and long polls, a bound on the user's open sockets and on each socket's subscriptions.
//! Every frame costs the node a parse and often a look-up; a subscription costs a place in the
//! room's fan-out; a socket costs memory, a task and a presence entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::FanoutError;

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

/// Open sockets per user on this node.
#[derive(Default)]
pub struct SocketCounts {
    open: Mutex<HashMap<String, usize>>,
}

/// A socket's place in [`SocketCounts`], given back when dropped.
pub struct SocketPlace {
    counts: Arc<SocketCounts>,
    user: String,
}

impl SocketCounts {
    /// Takes a place for one more socket of `user`, unless the user holds `max` already.
    pub fn take(self: &Arc<Self>, user: &str, max: usize) -> Result<SocketPlace, FanoutError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(user.to_string()).or_default();
        if *count >= max {
            return Err(FanoutError::TooMany(
                "too_many_sockets",
                format!("a user may hold {max} sockets on a node; close one first"),
            ));
        }
        *count += 1;
        Ok(SocketPlace {
            counts: self.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for SocketPlace {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_per_user_and_given_back() {
        let counts = Arc::new(SocketCounts::default());
        let first = counts.take("u", 2).unwrap();
        let _second = counts.take("u", 2).unwrap();
        assert_eq!(
            counts.take("u", 2).err().map(|e| e.code()),
            Some("too_many_sockets")
        );
        assert!(counts.take("other", 2).is_ok());
        drop(first);
        assert!(counts.take("u", 2).is_ok());
    }
}
