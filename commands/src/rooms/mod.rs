//! The write model of rooms: the state each room's single writer keeps (rebuilt from the log)
//! and the rules that turn a command into events.

mod calls;
pub mod decide;
pub mod state;
pub mod validate;

pub use decide::{Actor, Command, Decision, FileInfo, LeaveReason, Outcome, decide};
pub use state::{Applied, Rooms};

#[cfg(test)]
mod tests;
