//! The write side (issue #3): authentication and every room, message and call command,
//! validated against room state rebuilt from `chat.room-events` and appended as Avro events
//! by the single writer of each room partition. Nothing is implemented here yet; the crate
//! exists so the workspace has its final shape and dependencies are shared from the start.
