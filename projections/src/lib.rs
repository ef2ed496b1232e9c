//! The read side: projectors that fold the event log into read models. Each projector reads
//! every partition of its topics from its own checkpoints (kept in its store, with its data)
//! and applies each room's events exactly once, in order; what it cannot apply goes to
//! `chat.dead-letter` and it moves on.

pub mod config;
pub mod deadletter;
pub mod directory;
pub mod error;
pub mod gate;
pub mod mongo;
pub mod runner;
pub mod source;
pub mod text;

pub use error::ProjectionError;
