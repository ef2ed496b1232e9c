//! The read API: history paging, search, rooms, members, presence, unread counts and file
//! downloads, answered from the read models the projectors maintain. It never writes.

pub mod access;
pub mod app;
pub mod config;
pub mod error;
pub mod files;
pub mod limits;
pub mod messages;
pub mod params;
pub mod rooms;
pub mod state;
