use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use platform::auth::TokenVerifier;
use signaling::app::{self, App};
use signaling::config::Config;
use signaling::turn::TurnSecret;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if platform::openapi::start("signaling", signaling::app::openapi)? {
        return Ok(());
    }
    let config = Config::from_env()?;
    let turn = TurnSecret::load(&config.turn_secret_file).with_context(|| {
        format!(
            "cannot read the TURN secret (CHAT_TURN_SECRET_FILE={})",
            config.turn_secret_file.display()
        )
    })?;
    let redis = platform::cache::connect(&config.redis_url)
        .await
        .context("cannot connect to Redis")?;
    let verifier =
        TokenVerifier::from_url_when_up(&config.jwks_url, redis.clone(), &config.redis_prefix)
            .await
            .context("cannot fetch the token keys (CHAT_JWKS_URL)")?;
    let registry = prometheus::Registry::new();
    let limits =
        signaling::limits::Limits::new(&config.budgets, &platform::limits::refusals(&registry)?);
    let app = Arc::new(App {
        limits,
        redis,
        verifier,
        turn,
        config: config.clone(),
    });
    let stop = CancellationToken::new();
    let keys = app.clone();
    let keys_stop = stop.clone();
    tokio::spawn(async move {
        keys.verifier
            .keep_keys_fresh(Duration::from_secs(300), keys_stop)
            .await
    });
    let sweeper = app.clone();
    platform::limits::sweep_every_minute(move || sweeper.limits.sweep(), stop.clone());
    let router = app::router(app, registry)?;
    let listener = platform::listen::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, "signaling ready");
    axum::serve(listener, router)
        .with_graceful_shutdown(platform::shutdown::signal())
        .await?;
    stop.cancel();
    tracing::info!("signaling stopped");
    Ok(())
}
