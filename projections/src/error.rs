/// What can stop a projector. Store errors are retried by the runner (the batch is re-applied,
/// which the stores' idempotent writes make safe); they never skip events.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("event contract: {0}")]
    Schema(#[from] schemas::SchemaError),
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("clickhouse: {0}")]
    ClickHouse(String),
    /// The store no longer holds what this projector last wrote to it (a database that
    /// restarted without its last commits: FerretDB's PostgreSQL commits asynchronously). The
    /// runner reopens the projector from the checkpoints the store does hold.
    #[error("the store went back: {0}")]
    StoreBehind(String),
    #[error("{0}")]
    Other(String),
}
