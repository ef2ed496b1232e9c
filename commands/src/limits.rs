//! The commands tier's budgets (`platform::limits`): one per kind of write, per user, and per
//! client address for the anonymous identity calls. Each is resized by `CHAT_LIMIT_<NAME>`.
//! Sizes are chosen for people typing and clicking: a script hits them, a person does not.
//!
//! Room commands are counted where their room is written (the forwarding layer delivers each
//! command there once), everything else where it arrives.

use crate::error::CommandError;

platform::budgets! {
    pub struct Budgets / Limits {
        /// Posting messages, per user.
        posts: 10.0, 30;
        /// Editing and deleting messages, per user.
        edits: 2.0, 20;
        /// Adding and removing reactions, per user.
        reactions: 5.0, 30;
        /// Read markers, per user.
        read_markers: 5.0, 30;
        /// Creating rooms and changing their name, topic or visibility, per user.
        rooms: 0.1, 10;
        /// Join, leave, invite, ban and role changes, per user.
        membership: 2.0, 30;
        /// Starting, joining, leaving, declining and ending calls, per user.
        calls: 1.0, 20;
        /// Uploads, per user.
        uploads: 0.2, 10;
        /// Registrations, per client address.
        registrations: 0.1, 20;
        /// Token refreshes, per client address.
        refreshes: 1.0, 30;
        /// Logouts, per user.
        sessions: 1.0, 10;
    }
}

impl From<platform::limits::Exhausted> for CommandError {
    fn from(e: platform::limits::Exhausted) -> Self {
        CommandError::RateLimited {
            retry_after: e.retry_after,
        }
    }
}
