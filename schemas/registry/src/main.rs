use std::sync::Arc;

use anyhow::Context;
use schema_registry::RegistryConfig;
use schema_registry::api::{self, AppState};
use schema_registry::store::Store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init("schema-registry");
    let config = RegistryConfig::from_env()?;
    let store = Store::connect(&config)
        .await
        .with_context(|| format!("cannot open the registry store at {}", config.database_url))?;
    let state = Arc::new(AppState {
        store,
        max_body_bytes: config.max_body_bytes,
    });
    let app = api::router(state, prometheus::Registry::new())?;
    let listener = platform::listen::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, pg_schema = %config.pg_schema, "schema registry ready");
    axum::serve(listener, app)
        .with_graceful_shutdown(platform::shutdown::signal())
        .await?;
    tracing::info!("schema registry stopped");
    Ok(())
}
