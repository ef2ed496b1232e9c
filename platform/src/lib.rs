//! The small amount of plumbing every tier of the platform needs in exactly the same shape.
//!
//! Keeping it here means an operator sees the same env-var conventions, log format, ops
//! endpoints and error bodies whichever binary they run, and each service crate only holds its
//! own domain.

pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod files;
pub mod internal;
pub mod json;
pub mod limits;
pub mod listen;
pub mod openapi;
pub mod ops;
pub mod pg;
pub mod retry;
pub mod shutdown;
pub mod telemetry;

pub use config::ConfigError;
pub use error::ApiError;
