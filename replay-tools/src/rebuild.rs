//! `rebuild`: fold the log into a fresh generation of a read model, switch readers and the
//! running projector over to it in one step, then drop the old generation (`projections::live`).
//!
//! The new generation is filled by the projectors' own code, with checkpoints stored beside
//! its data, up to the log's end as it was when the rebuild started; after the switch the live
//! projector reopens on it and continues from those checkpoints.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use backon::BackoffBuilder;
use projections::analytics::AnalyticsProjector;
use projections::config::Config;
use projections::deadletter::DeadLetter;
use projections::live;
use projections::mongo::MongoProjector;
use projections::presence::PresenceProjector;
use projections::runner::Project;
use projections::source::{Positions, Source, SourceConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::EventCodec;
use schemas::topics::Topic;

use crate::progress::Progress;

/// The read models `rebuild` and `verify` know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Mongo,
    Redis,
    Clickhouse,
    All,
}

impl Target {
    pub fn expand(self) -> Vec<Target> {
        match self {
            Target::All => vec![Target::Mongo, Target::Redis, Target::Clickhouse],
            t => vec![t],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Mongo => "mongo",
            Target::Redis => "redis",
            Target::Clickhouse => "clickhouse",
            Target::All => "all",
        }
    }
}

/// Where a rebuild starts reading.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    Beginning,
    /// Milliseconds since the epoch: the first record at or after it, per partition.
    Time(i64),
}

pub struct Options {
    pub start: Start,
    pub batch: usize,
    /// How long the old generation stays after the switch, so a projector that was in the
    /// middle of a batch finishes it there before the generation is dropped.
    pub grace: Duration,
    pub show_progress: bool,
}

pub struct Report {
    pub target: Target,
    pub generation: String,
    pub previous: String,
    pub events: u64,
    pub seconds: f64,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// One generation of one store, opened for writing.
enum Fresh {
    Mongo(MongoProjector),
    Redis(PresenceProjector),
    Clickhouse(Box<AnalyticsProjector>),
}

pub async fn rebuild(target: Target, config: &Config, options: &Options) -> anyhow::Result<Report> {
    if let (Start::Time(_), Target::Mongo | Target::Redis) = (options.start, target) {
        bail!(
            "--from-time works for clickhouse only: the {} model holds rooms, members and history that \
             only the whole log can rebuild (use --from-beginning)",
            target.name()
        );
    }
    let suffix = live::new_generation_suffix();
    let (fresh, generation, previous) = match target {
        Target::Mongo => {
            let client = mongodb::Client::with_uri_str(&config.mongo_url)
                .await
                .context("CHAT_MONGO_URL")?;
            let previous = live::mongo_live(&client, &config.mongo_db).await?;
            let generation = format!("{}_{suffix}", config.mongo_db);
            let projector = MongoProjector::open(client.database(&generation)).await?;
            (Fresh::Mongo(projector), generation, previous)
        }
        Target::Redis => {
            let redis = crate::connect_redis(config).await?;
            let previous = live::redis_live(&redis, &config.redis_prefix).await?;
            let generation = format!("{}{suffix}:", config.redis_prefix);
            let projector = PresenceProjector::new(redis, generation.clone());
            projector.ensure_whole().await?;
            (Fresh::Redis(projector), generation, previous)
        }
        Target::Clickhouse => {
            let client = projections::analytics::client(&config.clickhouse_url);
            let previous = live::clickhouse_live(&client, &config.clickhouse_db)
                .await
                .with_context(|| format!("cannot reach ClickHouse at {}", config.clickhouse_url))?;
            let generation = format!("{}_{suffix}", config.clickhouse_db);
            let mut projector = AnalyticsProjector::open(client, &generation)
                .await?
                .with_batch(options.batch);
            if let Start::Time(_) = options.start {
                projector = projector.from_point_in_time();
            }
            (Fresh::Clickhouse(Box::new(projector)), generation, previous)
        }
        Target::All => bail!("rebuild one target at a time"),
    };
    if generation == previous {
        bail!("generation {generation} is already live; wait a second and run again");
    }
    let topics = projections::topics_of(target.name()).unwrap_or_default();
    let ends = projections::verify::high_watermarks(&config.brokers, &topics)
        .with_context(|| format!("cannot read the log at {}", config.brokers))?;
    let start = start_positions(&config.brokers, &topics, options.start)?;
    let total: i64 = ends
        .iter()
        .map(|(k, end)| end - start.get(k).copied().unwrap_or(0))
        .sum();
    let codec = Arc::new(EventCodec::new(&config.registry_url)?);
    let group = format!("chat-rebuild-{}", target.name());
    let dead_letter = DeadLetter::new(&config.brokers, &group, dead_letter_metric()?)?;
    let source = Source::open(
        SourceConfig {
            brokers: config.brokers.clone(),
            group_id: group,
            topics: topics.clone(),
            max_batch: options.batch,
            max_wait: Duration::from_millis(100),
            fetch_wait_ms: 10,
        },
        codec,
        dead_letter.clone(),
        &start,
    )
    .await?;

    let started = Instant::now();
    let progress = Progress::new(
        &format!("rebuild {}", target.name()),
        total.max(0) as u64,
        options.show_progress,
    );
    let events = match fresh {
        Fresh::Mongo(p) => fill(p, source, &dead_letter, &ends, &start, &progress).await?,
        Fresh::Redis(p) => fill(p, source, &dead_letter, &ends, &start, &progress).await?,
        Fresh::Clickhouse(p) => fill(*p, source, &dead_letter, &ends, &start, &progress).await?,
    };
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();

    switch_and_drop(target, config, &generation, &previous, options.grace).await?;
    Ok(Report {
        target,
        generation,
        previous,
        events,
        seconds,
    })
}

/// Reads from `start` to `ends` and applies every batch; returns the records read.
///
/// The next batch is read (and decoded) while the store takes the current one: the two wait
/// on different servers, and a rebuild doing them one after the other left a core idle.
/// Batches are still applied one at a time, in log order.
async fn fill<P: Project>(
    mut projector: P,
    mut source: Source,
    dead_letter: &DeadLetter,
    ends: &Positions,
    start: &Positions,
    progress: &Progress,
) -> anyhow::Result<u64> {
    let mut at: Positions = start.clone();
    let remaining = |at: &Positions| {
        ends.iter()
            .any(|(k, end)| at.get(k).copied().unwrap_or(0) < *end)
    };
    let mut read = 0u64;
    if !remaining(&at) {
        return Ok(read);
    }
    let mut batch = next_batch(&mut source).await?;
    loop {
        let mut batch_read = 0u64;
        for (k, next) in &batch.positions {
            let before = at.get(k).copied().unwrap_or(0);
            if *next > before {
                let end = ends.get(k).copied().unwrap_or(*next);
                batch_read += (next.min(&end) - before.min(end)).max(0) as u64;
                at.insert(*k, *next);
            }
        }
        let more = remaining(&at);
        let following = if more {
            let (applied, following) = tokio::join!(
                apply(&mut projector, &batch, dead_letter),
                next_batch(&mut source)
            );
            applied?;
            Some(following?)
        } else {
            apply(&mut projector, &batch, dead_letter).await?;
            None
        };
        read += batch_read;
        progress.set(read);
        match following {
            Some(next) => batch = next,
            None => return Ok(read),
        }
    }
}

async fn next_batch(source: &mut Source) -> anyhow::Result<projections::source::Batch> {
    tokio::time::timeout(Duration::from_secs(60), source.next_batch())
        .await
        .context("the broker sent nothing for 60 s before the end of the log")?
        .map_err(Into::into)
}

/// Applies one batch, retrying a store that refuses it a few times.
async fn apply<P: Project>(
    projector: &mut P,
    batch: &projections::source::Batch,
    dead_letter: &DeadLetter,
) -> anyhow::Result<()> {
    let mut delays = platform::retry::policy().with_max_times(8).build();
    while batch.has_records() {
        match projector.apply(batch, dead_letter).await {
            Ok(_) => break,
            Err(e) => match delays.next() {
                Some(wait) => {
                    platform::retry::note("rebuild_batch", &e, wait);
                    projector.reset();
                    tokio::time::sleep(wait).await;
                }
                None => return Err(e).context("the store keeps refusing writes"),
            },
        }
    }
    Ok(())
}

async fn switch_and_drop(
    target: Target,
    config: &Config,
    generation: &str,
    previous: &str,
    grace: Duration,
) -> anyhow::Result<()> {
    match target {
        Target::Mongo => {
            let client = mongodb::Client::with_uri_str(&config.mongo_url).await?;
            live::mongo_switch(&client, &config.mongo_db, generation).await?;
            tokio::time::sleep(grace).await;
            client
                .database(previous)
                .drop()
                .await
                .with_context(|| format!("dropping {previous}"))?;
        }
        Target::Redis => {
            let redis = crate::connect_redis(config).await?;
            live::redis_switch(&redis, &config.redis_prefix, generation).await?;
            tokio::time::sleep(grace).await;
            live::redis_drop(&redis, previous).await?;
        }
        Target::Clickhouse => {
            let client = projections::analytics::client(&config.clickhouse_url);
            live::clickhouse_switch(&client, &config.clickhouse_db, generation).await?;
            tokio::time::sleep(grace).await;
            live::clickhouse_drop(&client, previous).await?;
        }
        Target::All => {}
    }
    Ok(())
}

/// Per partition, where reading starts: nothing (the beginning) or the first offset at `T`.
fn start_positions(brokers: &str, topics: &[Topic], start: Start) -> anyhow::Result<Positions> {
    let Start::Time(ms) = start else {
        return Ok(Positions::new());
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let timeout = Duration::from_secs(10);
    let mut query = TopicPartitionList::new();
    for &topic in topics {
        for p in 0..schemas::kafka::partition_count(&consumer, topic.name(), timeout)? {
            query.add_partition_offset(topic.name(), p, Offset::Offset(ms))?;
        }
    }
    let found = consumer
        .offsets_for_times(query, timeout)
        .context("the broker cannot look up offsets by time")?;
    let mut positions = Positions::new();
    for element in found.elements() {
        let Some(topic) = Topic::from_name(element.topic()) else {
            continue;
        };
        let offset = match element.offset() {
            Offset::Offset(o) => o,
            // No record at or after T: start at the end.
            _ => {
                consumer
                    .fetch_watermarks(element.topic(), element.partition(), timeout)?
                    .1
            }
        };
        positions.insert((topic, element.partition()), offset);
    }
    Ok(positions)
}

fn dead_letter_metric() -> anyhow::Result<prometheus::IntCounterVec> {
    Ok(prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "rebuild_dead_letters_total",
            "Records sent to chat.dead-letter",
        ),
        &["consumer", "kind"],
    )?)
}
