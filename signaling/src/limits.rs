//! The signaling tier's budgets (`platform::limits`), per user.

use crate::error::SignalingError;

platform::budgets! {
    pub struct Budgets / Limits {
        /// TURN credentials: a client needs one set per call, not one per second.
        turn: 0.2, 10;
        /// Relayed offers, answers and ICE candidates: setting up a call sends a burst of them
        /// (a candidate per interface and transport), an ICE restart another.
        signals: 20.0, 200;
        /// SFU negotiations (publish, subscribe, start): a participant joining a call of n
        /// makes about 2n of them, a reconnect as many again.
        sfu: 5.0, 100;
    }
}

impl From<platform::limits::Exhausted> for SignalingError {
    fn from(e: platform::limits::Exhausted) -> Self {
        SignalingError::RateLimited {
            retry_after: e.retry_after,
        }
    }
}
