//! Identity: accounts, passwords, sessions and tokens. PostgreSQL holds credentials (the one
//! store besides the log); registration and revocations reach `chat.user-events` through the
//! transactional outbox, with no secret ever on a topic.

pub mod handlers;
pub mod outbox;
pub mod passwords;
pub mod revocations;
pub mod store;
pub mod throttle;
pub mod tokens;
pub mod validate;
