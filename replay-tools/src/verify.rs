//! `verify`: recompute a read model from the log (up to the positions the store says it has
//! applied) and list every difference from what the store holds.

use anyhow::{Context, bail};
use projections::analytics::AnalyticsProjector;
use projections::config::Config;
use projections::live;
use projections::model::Model;
use projections::mongo::MongoProjector;
use projections::presence::PresenceProjector;
use projections::runner::Project;
use projections::source::Positions;
use schemas::EventCodec;

use crate::progress::Progress;
use crate::rebuild::Target;

/// What the comparison found, and against which generation.
pub struct Verdict {
    pub generation: String,
    pub events: usize,
    pub differences: Vec<String>,
}

enum Store {
    Mongo(MongoProjector),
    Redis(PresenceProjector, redis::aio::ConnectionManager, String),
    Clickhouse(Box<AnalyticsProjector>),
}

impl Store {
    async fn checkpoints(&self) -> anyhow::Result<Positions> {
        Ok(match self {
            Store::Mongo(p) => p.checkpoints().await?,
            Store::Redis(p, _, _) => p.checkpoints().await?,
            Store::Clickhouse(p) => p.checkpoints().await?,
        })
    }
}

pub async fn verify(
    target: Target,
    config: &Config,
    show_progress: bool,
) -> anyhow::Result<Verdict> {
    let (store, generation) = match target {
        Target::Mongo => {
            let client = mongodb::Client::with_uri_str(&config.mongo_url)
                .await
                .context("CHAT_MONGO_URL")?;
            let generation = live::mongo_live(&client, &config.mongo_db).await?;
            (
                Store::Mongo(MongoProjector::attach(client.database(&generation))),
                generation,
            )
        }
        Target::Redis => {
            let redis = crate::connect_redis(config).await?;
            let generation = live::redis_live(&redis, &config.redis_prefix).await?;
            (
                Store::Redis(
                    PresenceProjector::new(redis.clone(), generation.clone()),
                    redis,
                    generation.clone(),
                ),
                generation,
            )
        }
        Target::Clickhouse => {
            let client = projections::analytics::client(&config.clickhouse_url);
            let generation = live::clickhouse_live(&client, &config.clickhouse_db)
                .await
                .with_context(|| format!("cannot reach ClickHouse at {}", config.clickhouse_url))?;
            (
                Store::Clickhouse(Box::new(
                    AnalyticsProjector::open(client, &generation).await?,
                )),
                generation,
            )
        }
        Target::All => bail!("verify one target at a time"),
    };
    let codec = EventCodec::new(&config.registry_url)?;
    // A running projector may move the store while it is compared: compare again until the
    // positions before and after agree.
    for _ in 0..5 {
        let before = store.checkpoints().await?;
        let total: i64 = before.values().sum();
        let progress = Progress::new(
            &format!("verify {}", target.name()),
            total.max(0) as u64,
            show_progress,
        );
        let events =
            projections::verify::read_log_to(&config.brokers, &codec, &before, |done, _| {
                progress.set(done)
            })
            .await
            .with_context(|| format!("cannot read the log at {}", config.brokers))?;
        progress.finish();
        let model = Model::from_events(&events);
        let differences = match &store {
            Store::Mongo(p) => projections::verify::verify_mongo(p.database(), &model).await?,
            Store::Redis(_, redis, prefix) => {
                projections::verify::verify_redis(redis, prefix, &model).await?
            }
            Store::Clickhouse(p) => {
                projections::verify::verify_clickhouse(p.client(), p.database(), &model).await?
            }
        };
        if store.checkpoints().await? == before {
            return Ok(Verdict {
                generation,
                events: events.len(),
                differences,
            });
        }
        tracing::info!("the store moved while it was compared; comparing again");
    }
    bail!(
        "the {} model kept moving during 5 comparisons; run verify when the log is quieter",
        target.name()
    )
}
