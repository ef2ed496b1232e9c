use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use platform::auth::TokenVerifier;
use schemas::EventCodec;
use tokio_util::sync::CancellationToken;
use ws_fanout::FanoutError;
use ws_fanout::config::Config;
use ws_fanout::heads::Heads;
use ws_fanout::hub::Hub;
use ws_fanout::interest::Interest;
use ws_fanout::metrics::Metrics;
use ws_fanout::presence::Presence;
use ws_fanout::socket::Node;
use ws_fanout::tail::{self, Tail};
use ws_fanout::typing::Typing;

/// Events kept for resumes over all rooms before idle rooms forget theirs.
const KEPT_EVENTS_BUDGET: usize = 200_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if platform::openapi::start("ws-fanout", ws_fanout::app::openapi)? {
        return Ok(());
    }
    let config = Config::from_env()?;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    let redis = platform::cache::connect(&config.redis_url)
        .await
        .context("cannot connect to Redis")?;
    // A broker that is starting (no leaders elected yet) answers metadata with errors for a
    // while: the node waits, unready, instead of exiting.
    let partitions = platform::retry::while_transient(
        "broker",
        || tail::partition_count(&config.brokers),
        FanoutError::is_transient,
    )
    .await
    .context("cannot read the room topic")?;
    let codec = Arc::new(EventCodec::new(&config.registry_url)?);
    let heads = Heads::new(redis.clone(), &config.redis_prefix, partitions);
    let hub = Arc::new(Hub::new(
        config.room_buffer,
        KEPT_EVENTS_BUDGET,
        partitions as usize,
        metrics.clone(),
    ));
    let (interest, commands) = Interest::new(partitions, config.interest_linger, metrics.clone());
    let interest = Arc::new(interest);
    let watermarks = tail::Watermarks::new(&config.brokers)?;
    let tail = Tail::open(
        &config.brokers,
        config.fetch_wait_ms,
        config.warm_records,
        codec.clone(),
        hub.clone(),
        heads.clone(),
        watermarks.clone(),
        interest.clone(),
    )?;
    let stop = CancellationToken::new();
    let typing = Arc::new(Typing::new(
        redis.clone(),
        &config.redis_prefix,
        hub.clone(),
        metrics.clone(),
    ));
    let presence = Arc::new(Presence::new(
        redis.clone(),
        &config.redis_prefix,
        &config.brokers,
        config.presence_ttl,
        codec.clone(),
        hub.clone(),
        heads.clone(),
        metrics.clone(),
    )?);
    tokio::spawn(typing.clone().expire(stop.clone()));
    let presence_task = tokio::spawn(presence.clone().keep(stop.clone()));
    let tail_task = tokio::spawn(tail.run(commands.log, stop.clone(), metrics.clone()));
    tokio::spawn(watermarks.watch_lag(hub.clone(), metrics.clone(), stop.clone()));
    {
        let hub = hub.clone();
        let metrics = metrics.clone();
        let stop = stop.clone();
        let interest = interest.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                interest.sweep(&hub.listened());
                hub.trim();
                metrics.kept_events.set(hub.kept() as i64);
            }
        });
    }
    let verifier =
        TokenVerifier::from_url_when_up(&config.jwks_url, redis.clone(), &config.redis_prefix)
            .await
            .context("cannot fetch the token keys (CHAT_JWKS_URL)")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let sockets = metrics.sockets.clone();
    let node = Arc::new(Node::new(
        config.clone(),
        hub,
        heads,
        verifier,
        http,
        metrics,
        stop.clone(),
        typing,
        presence,
        interest.clone(),
    )?);
    tokio::spawn(
        ws_fanout::fast::Fast {
            redis_url: config.redis_url.clone(),
            prefix: config.redis_prefix.clone(),
            typing: node.typing.clone(),
            presence: node.presence.clone(),
            codec: codec.clone(),
            hub: node.hub.clone(),
            metrics: node.metrics.clone(),
            sockets: node.sockets_per_user.clone(),
            subscribed: node.fast_subscribed.clone(),
            interest,
            commands: commands.fast,
        }
        .run(stop.clone()),
    );
    let keys = node.clone();
    let keys_stop = stop.clone();
    tokio::spawn(async move {
        keys.verifier
            .keep_keys_fresh(Duration::from_secs(300), keys_stop)
            .await
    });
    let sweeper = node.clone();
    platform::limits::sweep_every_minute(move || sweeper.limits.sweep(), stop.clone());
    tokio::spawn(ws_fanout::sessions::follow_revocations(
        config.brokers.clone(),
        codec.clone(),
        node.sessions.clone(),
        stop.clone(),
    ));
    let router = ws_fanout::app::router(node, registry)?;
    let listener = platform::listen::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, "ws-fanout ready");
    let shutdown = stop.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            platform::shutdown::signal().await;
            tracing::info!("SIGTERM: closing sockets with going-away");
            shutdown.cancel();
        })
        .await?;
    stop.cancel();
    // Upgraded sockets are not HTTP connections any more: give each its going-away close.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sockets.get() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tail_task.await;
    // Presence writes what it decided before the stop (bounded, `presence::DRAIN`).
    let _ = presence_task.await;
    tracing::info!("ws-fanout stopped");
    Ok(())
}
