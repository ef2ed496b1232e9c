use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use platform::auth::TokenVerifier;
use query_api::app::{self, App};
use query_api::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if platform::openapi::start("query-api", query_api::app::openapi)? {
        return Ok(());
    }
    let config = Config::from_env()?;
    let mongo = mongodb::Client::with_uri_str(&config.mongo_url)
        .await
        .context("CHAT_MONGO_URL")?;
    let redis = platform::cache::connect(&config.redis_url)
        .await
        .context("cannot connect to Redis")?;
    let directory =
        platform::pg::connect_in_schema(&config.pg_url, &config.directory_schema, 8, None)
            .await
            .context("cannot open the user directory")?;
    let verifier =
        TokenVerifier::from_url_when_up(&config.jwks_url, redis.clone(), &config.redis_prefix)
            .await
            .context("cannot fetch the token keys (CHAT_JWKS_URL)")?;
    let registry = prometheus::Registry::new();
    let limits =
        query_api::limits::Limits::new(&config.budgets, &platform::limits::refusals(&registry)?);
    let app = Arc::new(App {
        limits,
        db: std::sync::RwLock::new(mongo.database(&config.mongo_db)),
        presence_prefix: std::sync::RwLock::new(config.redis_prefix.clone()),
        mongo,
        redis,
        directory,
        verifier,
        config: config.clone(),
    });
    app.follow_live().await;
    let follower = app.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            follower.follow_live().await;
        }
    });
    let keys = app.clone();
    tokio::spawn(async move {
        keys.verifier
            .keep_keys_fresh(
                Duration::from_secs(300),
                tokio_util::sync::CancellationToken::new(),
            )
            .await
    });
    let sweeper = app.clone();
    platform::limits::sweep_every_minute(
        move || sweeper.limits.sweep(),
        tokio_util::sync::CancellationToken::new(),
    );
    let router = app::router(app, registry)?;
    let listener = platform::listen::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, "query-api ready");
    axum::serve(listener, router)
        .with_graceful_shutdown(platform::shutdown::signal())
        .await?;
    tracing::info!("query-api stopped");
    Ok(())
}
