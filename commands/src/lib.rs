//! The commands tier: the write side of the platform and the only producer of domain events.
//!
//! Identity (accounts, sessions, tokens) lives in PostgreSQL with a transactional outbox to
//! `chat.user-events`. Room and message commands are validated against room state rebuilt from
//! `chat.room-events` by the single writer of each room partition, which assigns the gap-free
//! per-room `seq` and answers only after the broker acknowledged.

pub mod app;
pub mod body;
pub mod calls_http;
pub mod config;
pub mod error;
pub mod files;
pub mod forward;
pub mod identity;
pub mod limits;
pub mod log;
pub mod rooms;
pub mod rooms_http;
pub mod state;
pub mod writer;
