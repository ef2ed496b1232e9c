use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use platform::auth::TokenVerifier;
use platform::internal::InternalSecret;
use schemas::EventCodec;
use signaling::app::{self, App};
use signaling::calls::Calls;
use signaling::config::Config;
use signaling::drops::Dropper;
use signaling::follow::Follower;
use signaling::metrics::Metrics;
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
    let metrics = Metrics::register(&registry)?;
    let calls = Calls::new(redis.clone(), &config.redis_prefix);
    let codec = Arc::new(EventCodec::new(&config.registry_url)?);
    let fast = signaling::fast::Fast {
        redis_url: config.redis_url.clone(),
        channel: config.fast_channel.clone(),
        codec: codec.clone(),
        calls: calls.clone(),
        metrics: metrics.clone(),
    };
    let secret = match InternalSecret::load(&config.internal_secret_file) {
        Ok(secret) => Some(secret),
        Err(e) => {
            tracing::warn!(error = %e, file = %config.internal_secret_file.display(), "no internal secret: participants whose sockets drop stay in their calls");
            None
        }
    };
    let dropper = Dropper {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?,
        commands_url: config.commands_url.clone(),
        secret,
        calls: calls.clone(),
    };
    let sfu = match platform::internal::read_secret(&config.janus_secret_file) {
        Ok(secret) => {
            let janus = signaling::janus::Janus::new(
                &config.janus_url,
                String::from_utf8(secret).context("the Janus secret is not text")?,
            )?;
            Some(Arc::new(signaling::sfu::Sfu::new(
                janus,
                redis.clone(),
                &config.redis_prefix,
                config.sfu_bitrate,
            )))
        }
        Err(e) => {
            tracing::warn!(error = %e, file = %config.janus_secret_file.display(), "no Janus secret: group calls are refused");
            None
        }
    };
    let stop = CancellationToken::new();
    let sfu_cleanup = sfu.as_ref().map(|sfu| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(signaling::sfu::janitor(
            sfu.clone(),
            calls.clone(),
            metrics.clone(),
            rx,
            stop.clone(),
        ));
        tx
    });
    let follower = Follower {
        sfu_cleanup,
        brokers: config.brokers.clone(),
        group: config.group_id.clone(),
        codec,
        dropper,
        calls: calls.clone(),
        metrics: metrics.clone(),
        caught_up: Arc::default(),
    };
    let caught_up = follower.caught_up.clone();
    let consumer = follower
        .create()
        .context("cannot read the room events (CHAT_KAFKA_BROKERS)")?;
    let app = Arc::new(App {
        limits,
        redis,
        verifier,
        turn,
        calls,
        sfu,
        metrics,
        caught_up,
        config: config.clone(),
    });
    let following = tokio::spawn(follower.run(consumer, stop.clone()));
    tokio::spawn(fast.run(stop.clone()));
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
    let _ = following.await;
    tracing::info!("signaling stopped");
    Ok(())
}
