//! The signaling tier's budgets (`platform::limits`), per user.

use crate::error::SignalingError;

platform::budgets! {
    pub struct Budgets / Limits {
        /// TURN credentials: a client needs one set per call, not one per second.
        turn: 0.2, 10;
    }
}

impl From<platform::limits::Exhausted> for SignalingError {
    fn from(e: platform::limits::Exhausted) -> Self {
        SignalingError::RateLimited {
            retry_after: e.retry_after,
        }
    }
}
