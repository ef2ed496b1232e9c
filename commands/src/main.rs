use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use commands::app::{self, App};
use commands::config::Config;
use commands::identity::passwords::Passwords;
use commands::identity::store::IdentityStore;
use commands::identity::throttle::Throttle;
use commands::identity::tokens::Signer;
use commands::limits::Limits;
use commands::log::EventLog;
use commands::writer::Writer;
use commands::writer::directory::OwnerDirectory;
use commands::writer::metrics::WriterMetrics;
use platform::auth::TokenVerifier;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if platform::openapi::start("commands", commands::app::openapi)? {
        return Ok(());
    }
    let config = Config::from_env()?;
    let registry = prometheus::Registry::new();

    let store = IdentityStore::connect(&config.pg_url, &config.pg_schema)
        .await
        .context("cannot open the identity store")?;
    let redis = platform::cache::connect(&config.redis_url)
        .await
        .context("cannot connect to Redis (CHAT_REDIS_URL)")?;
    let signer = match &config.jwt_private_key_pem {
        Some(pem) => Signer::from_pem(pem.as_bytes(), config.access_token_ttl)?,
        None => Signer::load(&config.jwt_private_key_file, config.access_token_ttl)?,
    };
    let verifier = TokenVerifier::new(
        signer.jwks(),
        None,
        redis.clone(),
        config.redis_prefix.clone(),
    )?;
    let log = Arc::new(
        EventLog::connect(&config.brokers, &config.registry_url)
            .await
            .context("cannot reach the broker or the schema registry")?
            .with_fast_channel(redis.clone(), &config.redis_prefix),
    );

    let shutdown = CancellationToken::new();
    let directory = OwnerDirectory::new(
        redis.clone(),
        &config.redis_prefix,
        &config.group_id,
        &config.advertise_url,
    );
    let (writer, membership) = Writer::start(
        log.clone(),
        WriterMetrics::register(&registry)?,
        directory,
        &config.group_id,
        (config.command_timeout, config.call_ring),
        shutdown.clone(),
    )
    .await?;
    let keeper = tokio::spawn(
        commands::identity::revocations::Keeper {
            store: store.clone(),
            redis: redis.clone(),
            prefix: config.redis_prefix.clone(),
            mark_ttl: config.access_token_ttl + Duration::from_secs(60),
        }
        .run(shutdown.clone()),
    );
    let relay = tokio::spawn(commands::identity::outbox::run(
        store.clone(),
        log.clone(),
        shutdown.clone(),
    ));

    let app = Arc::new(App {
        passwords: Passwords::new(config.argon2_m_kib, 2)?,
        throttle: Throttle::new(redis.clone(), config.redis_prefix.clone()),
        limits: Limits::new(&config.budgets, &platform::limits::refusals(&registry)?),
        http: reqwest::Client::builder()
            .timeout(config.command_timeout + Duration::from_secs(2))
            .build()?,
        files: commands::files::FileStore::new(
            config.files_dir.clone(),
            config.max_upload_bytes,
            config.upload_quota_bytes,
        )
        .await?,
        internal: match platform::internal::InternalSecret::load(&config.internal_secret_file) {
            Ok(secret) => Some(secret),
            Err(e) => {
                tracing::warn!(error = %e, file = %config.internal_secret_file.display(), "no internal secret: internal requests are refused");
                None
            }
        },
        config: config.clone(),
        store,
        signer,
        verifier,
        redis,
        writer,
    });
    let sweeper = {
        let app = app.clone();
        platform::limits::sweep_every_minute(move || app.limits.sweep(), shutdown.clone())
    };
    let collector = tokio::spawn(commands::files::collect(
        app.files.clone(),
        app.store.pool().clone(),
        config.upload_grace,
        shutdown.clone(),
    ));

    let router = app::router(app, registry)?;
    let listener = platform::listen::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, advertise = %config.advertise_url, group = %config.group_id, "commands ready");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(platform::shutdown::signal())
    .await?;

    // Requests are finished; hand the partitions over (draining appends) and stop.
    shutdown.cancel();
    let _ = tokio::task::spawn_blocking(move || membership.join()).await;
    let _ = relay.await;
    let _ = keeper.await;
    let _ = collector.await;
    let _ = sweeper.await;
    log.flush(Duration::from_secs(10));
    tracing::info!("commands stopped");
    Ok(())
}
