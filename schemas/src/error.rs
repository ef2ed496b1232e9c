#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema registry: {0}")]
    Registry(String),
    #[error("record is not in Confluent wire format or its schema is unknown: {0}")]
    Undecodable(String),
    #[error("record {record} is not an event of the catalog")]
    UnknownRecord { record: String },
    #[error("record {record} does not match its Rust type: {reason}")]
    Mismatch { record: String, reason: String },
    #[error("invalid envelope for {kind}: {reason}")]
    InvalidEnvelope { kind: &'static str, reason: String },
    #[error("bundled schema {file} is invalid: {reason}")]
    BundledSchema { file: &'static str, reason: String },
    #[error("cannot create topic {topic}: {reason}")]
    TopicCreation { topic: String, reason: String },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl SchemaError {
    /// A dependency failed (the registry or the broker did not answer), not the record: the
    /// same call may succeed later, so a reader retries instead of giving the record up.
    pub fn is_transient(&self) -> bool {
        matches!(self, SchemaError::Registry(_) | SchemaError::Kafka(_))
    }
}
