//! Calls: coturn REST-API credentials now; offer/answer/ICE relay between a call's participants
//! and the call's state (ringing, Janus rooms) are built on this tier next (see the calls issue).
//! The call lifecycle events themselves are written by the commands tier, the only producer of
//! domain events.

pub mod app;
pub mod config;
pub mod error;
pub mod limits;
pub mod turn;
