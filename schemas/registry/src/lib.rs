//! A Confluent-compatible schema registry for the platform's Avro events.
//!
//! No Confluent, Karapace or Apicurio registry can be installed on the development machines, so
//! the project ships this one. It speaks the subset of the Confluent REST API that
//! `schema_registry_converter` and operators use (plus compatibility config), answers Confluent's
//! error bodies and codes, keeps its data in PostgreSQL so ids survive restarts, and checks
//! compatibility on every registration. A real Confluent registry is a drop-in replacement.

pub mod api;
pub mod config;
pub mod error;
pub mod normalize;
pub mod store;

pub use config::RegistryConfig;
pub use error::RegistryError;
