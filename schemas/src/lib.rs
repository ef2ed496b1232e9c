//! The event contract of the platform.
//!
//! Kafka is the source of truth, so everything every tier agrees on lives here: the Avro schema
//! of each event (`avro/*.avsc`, with every released version kept in `avro/released/` so the
//! BACKWARD-compatibility test has something to check against), the Rust type of each event,
//! the codec that writes them in Confluent wire format through the schema registry, the topic
//! names, their partition counts, and the partitioner that maps a room to its partition.

pub mod catalog;
pub mod codec;
pub mod compat;
pub mod envelope;
mod error;
pub mod events;
pub mod kafka;
pub mod partition;
pub mod topics;

pub use catalog::{DomainEvent, EventKind};
pub use codec::EventCodec;
pub use envelope::Envelope;
pub use error::SchemaError;

/// Where the local stack's registry answers (Apicurio's Confluent-compatible API), for services
/// started without `CHAT_REGISTRY_URL`.
pub const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:8081/apis/ccompat/v7";
