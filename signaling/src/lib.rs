//! Calls: the call state (who is in which call, followed from the log), the relay of offers,
//! answers and ICE candidates between a call's participants, group calls through the SFU
//! (Janus), and coturn REST-API credentials.
//! The call lifecycle events themselves are written by the commands tier, the only producer of
//! domain events.

pub mod app;
pub mod calls;
pub mod config;
pub mod drops;
pub mod error;
pub mod fast;
pub mod follow;
pub mod janus;
pub mod limits;
pub mod metrics;
pub mod relay;
pub mod sfu;
pub mod turn;
