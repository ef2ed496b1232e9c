use std::sync::Arc;

use anyhow::{Context, bail};
use futures::FutureExt;
use projections::ProjectionError;
use projections::analytics::AnalyticsProjector;
use projections::config::Config;
use projections::deadletter::DeadLetter;
use projections::directory::DirectoryProjector;
use projections::mongo::MongoProjector;
use projections::presence::PresenceProjector;
use projections::runner::{self, Ended, Project, RunnerMetrics};
use projections::source::{Source, SourceConfig};
use schemas::EventCodec;
use std::future::Future;
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
    let mut ops = platform::ops::Ops::new(registry.clone()).dependencies(
        schemas::kafka::log_checks(&config.brokers, &config.registry_url),
    );

    for name in &config.projectors {
        let group = format!("{}{name}", config.group_prefix);
        let dead_letter = DeadLetter::new(&config.brokers, &group, metrics.dead_letters.clone())?;
        let source_config = SourceConfig {
            brokers: config.brokers.clone(),
            group_id: group.clone(),
            topics: projections::topics_of(name).unwrap_or_default(),
            max_batch: config.max_batch,
            max_wait: config.max_wait,
            fetch_wait_ms: config.fetch_wait_ms,
        };
        let run = Run {
            source: source_config,
            codec: codec.clone(),
            dead_letter,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        match name.as_str() {
            "mongo" => {
                let client = mongodb::Client::with_uri_str(&config.mongo_url)
                    .await
                    .context("CHAT_MONGO_URL")?;
                let probe_client = client.clone();
                ops = ops.probe("mongo", move || {
                    let db = probe_client.database("admin");
                    async move { read_model::ping(&db).await }.boxed()
                });
                let base = config.mongo_db.clone();
                tasks.push(tokio::spawn(run.supervise(move || {
                    let (client, base) = (client.clone(), base.clone());
                    async move { MongoProjector::open_live(client, &base).await }
                })));
            }
            "redis" => {
                let redis = platform::cache::connect(&config.redis_url)
                    .await
                    .context("cannot connect to Redis")?;
                let probe = redis.clone();
                ops = ops.probe("redis", move || {
                    let redis = probe.clone();
                    async move { platform::cache::ping(&redis).await }.boxed()
                });
                let base = config.redis_prefix.clone();
                tasks.push(tokio::spawn(run.supervise(move || {
                    let (redis, base) = (redis.clone(), base.clone());
                    async move { PresenceProjector::open_live(redis, &base).await }
                })));
            }
            "clickhouse" => {
                let client = projections::analytics::client(&config.clickhouse_url);
                let probe = client.clone();
                ops = ops.probe("clickhouse", move || {
                    let client = probe.clone();
                    async move {
                        client
                            .query("SELECT 1")
                            .execute()
                            .await
                            .map_err(|e| e.to_string())
                    }
                    .boxed()
                });
                let db = config.clickhouse_db.clone();
                let max_batch = config.max_batch;
                tasks.push(tokio::spawn(run.supervise(move || {
                    let (client, db) = (client.clone(), db.clone());
                    async move { AnalyticsProjector::open_live(client, &db, max_batch).await }
                })));
            }
            "directory" => {
                let projector = DirectoryProjector::open(&config.pg_url, &config.directory_schema)
                    .await
                    .context("cannot prepare the user directory")?;
                let pool = projector.pool().clone();
                ops = ops.pool("postgres", pool.clone());
                ops = ops.probe("postgres", move || {
                    let pool = pool.clone();
                    async move { platform::pg::ping(&pool).await }.boxed()
                });
                let (url, schema) = (config.pg_url.clone(), config.directory_schema.clone());
                let first = std::sync::Mutex::new(Some(projector));
                tasks.push(tokio::spawn(run.supervise(move || {
                    let ready = first.lock().ok().and_then(|mut f| f.take());
                    let (url, schema) = (url.clone(), schema.clone());
                    async move {
                        match ready {
                            Some(p) => Ok(p),
                            None => DirectoryProjector::open(&url, &schema).await,
                        }
                    }
                })));
            }
            other => {
                bail!(
                    "unknown projector {other:?} in CHAT_PROJECTORS (known: mongo, redis, clickhouse, directory)"
                )
            }
        }
    }

    let listener = platform::listen::bind(config.listen)
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

/// What every projector task shares: where it reads and how it reports.
struct Run {
    source: SourceConfig,
    codec: Arc<EventCodec>,
    dead_letter: DeadLetter,
    metrics: RunnerMetrics,
    shutdown: CancellationToken,
}

impl Run {
    /// Opens the projector (on the live generation) and runs it; when a rebuild moves the live
    /// generation, opens it again there, from that generation's checkpoints.
    async fn supervise<P, F, Fut>(self, open: F) -> Result<(), ProjectionError>
    where
        P: Project,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<P, ProjectionError>>,
    {
        loop {
            let projector = open().await?;
            let start = projector.checkpoints().await?;
            let source = Source::open(
                self.source.clone(),
                self.codec.clone(),
                self.dead_letter.clone(),
                &start,
            )
            .await?;
            match runner::run(
                projector,
                source,
                self.dead_letter.clone(),
                self.metrics.clone(),
                self.shutdown.clone(),
            )
            .await?
            {
                Ended::Shutdown => return Ok(()),
                Ended::Moved => continue,
            }
        }
    }
}
