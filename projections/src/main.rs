use std::sync::Arc;

use anyhow::{Context, bail};
use futures::FutureExt;
use projections::analytics::AnalyticsProjector;
use projections::config::Config;
use projections::deadletter::DeadLetter;
use projections::directory::DirectoryProjector;
use projections::mongo::MongoProjector;
use projections::presence::PresenceProjector;
use projections::runner::{self, RunnerMetrics};
use projections::source::{Source, SourceConfig};
use schemas::EventCodec;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init("projections");
    let config = Config::from_env()?;
    let registry = prometheus::Registry::new();
    let metrics = RunnerMetrics::register(&registry)?;
    let codec = Arc::new(EventCodec::new(&config.registry_url)?);
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut ops = platform::ops::Ops::new(registry.clone());

    for name in &config.projectors {
        let group = format!("{}{name}", config.group_prefix);
        let dead_letter = DeadLetter::new(&config.brokers, &group, metrics.dead_letters.clone())?;
        let source_config = |topics| SourceConfig {
            brokers: config.brokers.clone(),
            group_id: group.clone(),
            topics,
            max_batch: config.max_batch,
            max_wait: config.max_wait,
            fetch_wait_ms: config.fetch_wait_ms,
        };
        match name.as_str() {
            "mongo" => {
                let client = mongodb::Client::with_uri_str(&config.mongo_url)
                    .await
                    .context("CHAT_MONGO_URL")?;
                let projector = MongoProjector::open(client.database(&config.mongo_db))
                    .await
                    .context("cannot prepare the MongoDB read model")?;
                let start = projector.checkpoints().await?;
                let source = Source::open(
                    source_config(MongoProjector::topics()),
                    codec.clone(),
                    dead_letter.clone(),
                    &start,
                )
                .await?;
                let probe_db = projector.database().clone();
                ops = ops.probe("mongo", move || {
                    let db = probe_db.clone();
                    async move {
                        db.run_command(mongodb::bson::doc! {"ping": 1})
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                    .boxed()
                });
                tasks.push(tokio::spawn(runner::run(
                    projector,
                    source,
                    dead_letter,
                    metrics.clone(),
                    shutdown.clone(),
                )));
            }
            "redis" => {
                let redis = platform::cache::connect(&config.redis_url)
                    .await
                    .context("cannot connect to Redis")?;
                let projector = PresenceProjector::new(redis.clone(), config.redis_prefix.clone());
                let start = projector.checkpoints().await?;
                let source = Source::open(
                    source_config(PresenceProjector::topics()),
                    codec.clone(),
                    dead_letter.clone(),
                    &start,
                )
                .await?;
                ops = ops.probe("redis", move || {
                    let mut redis = redis.clone();
                    async move {
                        redis::cmd("PING")
                            .query_async::<String>(&mut redis)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                    .boxed()
                });
                tasks.push(tokio::spawn(runner::run(
                    projector,
                    source,
                    dead_letter,
                    metrics.clone(),
                    shutdown.clone(),
                )));
            }
            "clickhouse" => {
                let projector = AnalyticsProjector::open(
                    projections::analytics::client(&config.clickhouse_url),
                    &config.clickhouse_db,
                )
                .await
                .context("cannot prepare the ClickHouse tables")?;
                let start = projector.checkpoints().await?;
                let source = Source::open(
                    source_config(AnalyticsProjector::topics()),
                    codec.clone(),
                    dead_letter.clone(),
                    &start,
                )
                .await?;
                let client = projector.client().clone();
                ops = ops.probe("clickhouse", move || {
                    let client = client.clone();
                    async move {
                        client
                            .query("SELECT 1")
                            .execute()
                            .await
                            .map_err(|e| e.to_string())
                    }
                    .boxed()
                });
                tasks.push(tokio::spawn(runner::run(
                    projector,
                    source,
                    dead_letter,
                    metrics.clone(),
                    shutdown.clone(),
                )));
            }
            "directory" => {
                let projector = DirectoryProjector::open(&config.pg_url, &config.directory_schema)
                    .await
                    .context("cannot prepare the user directory")?;
                let start = projector.checkpoints().await?;
                let source = Source::open(
                    source_config(DirectoryProjector::topics()),
                    codec.clone(),
                    dead_letter.clone(),
                    &start,
                )
                .await?;
                let pool = projector.pool().clone();
                ops = ops.probe("postgres", move || {
                    let pool = pool.clone();
                    async move {
                        sqlx::query("SELECT 1")
                            .execute(&pool)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                    .boxed()
                });
                tasks.push(tokio::spawn(runner::run(
                    projector,
                    source,
                    dead_letter,
                    metrics.clone(),
                    shutdown.clone(),
                )));
            }
            other => {
                bail!(
                    "unknown projector {other:?} in CHAT_PROJECTORS (known: mongo, redis, clickhouse, directory)"
                )
            }
        }
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, projectors = ?config.projectors, "projections ready");
    let server = axum::serve(listener, ops.router::<()>())
        .with_graceful_shutdown(platform::shutdown::signal());
    let stop = shutdown.clone();
    tokio::select! {
        result = server => { result?; }
        failed = futures::future::select_all(tasks.iter_mut()) => {
            let (result, _, _) = failed;
            stop.cancel();
            match result {
                Ok(Ok(())) => bail!("a projector stopped"),
                Ok(Err(e)) => bail!("a projector failed: {e}"),
                Err(e) => bail!("a projector panicked: {e}"),
            }
        }
    }
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    tracing::info!("projections stopped");
    Ok(())
}
