//! The WebSocket tier: authenticated sockets that receive their rooms' events in `seq` order,
//! with resume after `since_seq`, bounded queues and explicit resyncs.
//!
//! Every node tails, itself (no group commits), the partitions of `chat.room-events` its rooms
//! live in, and subscribes to those rooms' fast channels (`interest`); the hub passes each event
//! through its room's line, which releases only `head + 1`, and pushes it to the room's sockets.

pub mod access;
pub mod app;
pub mod commands;
pub mod config;
pub mod error;
pub mod fast;
pub mod heads;
pub mod hub;
pub mod interest;
pub mod limits;
pub mod line;
pub mod metrics;
pub mod poll;
pub mod presence;
pub mod protocol;
pub mod sessions;
pub mod signals;
pub mod socket;
pub mod tail;
pub mod typing;

pub use error::FanoutError;
