//! Operator CLI: topics (created by `deploy/local/up`), rebuild and verify of the read models,
//! and consumer lag. Store settings come from the same environment variables as the
//! `projections` service (`CHAT_MONGO_URL`, `CHAT_MONGO_DB`, `CHAT_REDIS_URL`,
//! `CHAT_REDIS_PREFIX`, `CHAT_CLICKHOUSE_URL`, `CHAT_CLICKHOUSE_DB`, `CHAT_REGISTRY_URL`).

mod exporter;
mod lag;
mod progress;
mod rebuild;
mod verify;

/// The Redis of the read models (live pointers, the presence model), with an error naming it.
async fn connect_redis(
    config: &projections::config::Config,
) -> anyhow::Result<redis::aio::ConnectionManager> {
    platform::cache::connect(&config.redis_url)
        .await
        .with_context(|| format!("cannot reach Redis at {}", config.redis_url))
}

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};
use schemas::kafka::{TopicState, ensure_topics};
use schemas::topics::Topic;

#[derive(Parser)]
#[command(name = "replay-tools", about = "Operate the chat platform's event log")]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "CHAT_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    brokers: String,
    /// How long to wait for the broker before giving up, in seconds.
    #[arg(long, default_value_t = 15, global = true)]
    timeout_secs: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Topic administration.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Rebuild a read model from the log into a fresh generation, switch over, drop the old one.
    Rebuild {
        #[arg(value_enum)]
        target: rebuild::Target,
        /// Read every partition from its first record (the default).
        #[arg(long, conflicts_with = "from_time")]
        from_beginning: bool,
        /// Start at the first record at or after this time (RFC 3339 like
        /// 2026-11-26T10:00:00Z, or milliseconds since the epoch); clickhouse only.
        #[arg(long)]
        from_time: Option<String>,
        /// Events per batch written to the store.
        #[arg(long, default_value_t = 2000)]
        batch: usize,
        /// Seconds the old generation is kept after the switch before it is dropped.
        #[arg(long, default_value_t = 3)]
        grace_secs: u64,
    },
    /// Recompute a read model from the log and print every difference (exit status 1 if any).
    Verify {
        #[arg(value_enum)]
        target: rebuild::Target,
    },
    /// Every consumer group's lag per partition.
    Lag,
    /// Serve every consumer group's lag as Prometheus metrics (the monitoring stack's lag
    /// exporter; SIGTERM stops it).
    ServeLag {
        /// Where `/metrics` answers.
        #[arg(long, env = "CHAT_LAG_LISTEN", default_value = "127.0.0.1:9108")]
        listen: std::net::SocketAddr,
        /// Seconds between measurements.
        #[arg(long, env = "CHAT_LAG_EVERY_SECS", default_value_t = 5)]
        every_secs: u64,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the platform's topics that are missing; leave existing ones alone.
    Ensure {
        /// Partitions of chat.room-events when it is created (default 12).
        #[arg(long, env = "CHAT_ROOM_PARTITIONS")]
        room_partitions: Option<i32>,
        /// Copies of every partition (3 on a three-node cluster; then min.insync.replicas=2).
        #[arg(long, env = "CHAT_KAFKA_REPLICATION", default_value_t = 1)]
        replication_factor: i32,
    },
    /// Show every platform topic with its partitions and low/high offsets.
    List,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Warnings and errors on stderr (RUST_LOG to see more); stdout is the command's answer.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rdkafka=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let timeout = Duration::from_secs(cli.timeout_secs);
    match cli.command {
        Command::Topics {
            command:
                TopicsCommand::Ensure {
                    room_partitions,
                    replication_factor,
                },
        } => {
            if let Some(p) = room_partitions
                && p < 1
            {
                bail!("--room-partitions must be at least 1, got {p}");
            }
            if replication_factor < 1 {
                bail!("--replication-factor must be at least 1, got {replication_factor}");
            }
            let replication = schemas::kafka::Replication(replication_factor);
            let states = ensure_topics(&cli.brokers, room_partitions, replication, timeout)
                .await
                .with_context(|| format!("ensuring topics on the broker at {}", cli.brokers))?;
            for (topic, state) in states {
                match state {
                    TopicState::Created { partitions } => {
                        println!("created  {:<24} {partitions:>3} partitions", topic.name())
                    }
                    TopicState::Existed { partitions } => {
                        println!("exists   {:<24} {partitions:>3} partitions", topic.name())
                    }
                }
            }
        }
        Command::Topics {
            command: TopicsCommand::List,
        } => list(&cli.brokers, timeout)?,
        Command::Rebuild {
            target,
            from_beginning: _,
            from_time,
            batch,
            grace_secs,
        } => {
            let config = store_config(&cli.brokers)?;
            let start = match from_time {
                Some(t) => rebuild::Start::Time(parse_time(&t)?),
                None => rebuild::Start::Beginning,
            };
            if batch == 0 {
                bail!("--batch must be at least 1");
            }
            let options = rebuild::Options {
                start,
                batch,
                grace: Duration::from_secs(grace_secs),
                show_progress: true,
            };
            for t in target.expand() {
                let report = rebuild::rebuild(t, &config, &options)
                    .await
                    .with_context(|| format!("rebuilding {}", t.name()))?;
                println!(
                    "rebuilt {:<10} {} events in {:.1} s ({:.0} events/s); live: {} (was {}, dropped)",
                    report.target.name(),
                    report.events,
                    report.seconds,
                    report.rate(),
                    report.generation,
                    report.previous
                );
            }
        }
        Command::Verify { target } => {
            let config = store_config(&cli.brokers)?;
            let mut differences = 0;
            for t in target.expand() {
                let verdict = verify::verify(t, &config, true)
                    .await
                    .with_context(|| format!("verifying {}", t.name()))?;
                for d in &verdict.differences {
                    println!("{}: {d}", t.name());
                }
                println!(
                    "verified {:<10} generation {}: {} events, {} differences",
                    t.name(),
                    verdict.generation,
                    verdict.events,
                    verdict.differences.len()
                );
                differences += verdict.differences.len();
            }
            if differences > 0 {
                std::process::exit(1);
            }
        }
        Command::ServeLag { listen, every_secs } => {
            let config = store_config(&cli.brokers)?;
            exporter::serve(
                cli.brokers.clone(),
                config.registry_url.clone(),
                (known_groups(&config), projector_groups(&config)),
                listen,
                Duration::from_secs(every_secs.max(1)),
                timeout,
            )
            .await?;
        }
        Command::Lag => {
            let config = store_config(&cli.brokers)?;
            let rows = lag::lag(&cli.brokers, &known_groups(&config), timeout)?;
            println!(
                "{:<32} {:<24} {:>9} {:>12} {:>12} {:>10}",
                "group", "topic", "partition", "committed", "end", "lag"
            );
            for r in rows {
                match r.lag() {
                    Some(lag) => println!(
                        "{:<32} {:<24} {:>9} {:>12} {:>12} {lag:>10}",
                        r.group,
                        r.topic,
                        r.partition,
                        r.committed.unwrap_or(0),
                        r.end
                    ),
                    None => println!("{:<32} (no committed positions)", r.group),
                }
            }
        }
    }
    Ok(())
}

/// The projectors' consumer groups.
fn projector_groups(config: &projections::config::Config) -> Vec<String> {
    projections::PROJECTORS
        .iter()
        .map(|p| format!("{}{p}", config.group_prefix))
        .collect()
}

/// The platform's own consumer groups (a broker may not list idle ones).
fn known_groups(config: &projections::config::Config) -> Vec<String> {
    let mut known = projector_groups(config);
    known.push("chat-commands".to_string());
    known
}

/// The stores' settings, read as the projections service reads them.
fn store_config(brokers: &str) -> anyhow::Result<projections::config::Config> {
    let mut config = projections::config::Config::from_env()?;
    config.brokers = brokers.to_string();
    Ok(config)
}

/// An RFC 3339 time (`2026-11-26T10:00:00Z`, any offset, optional fraction) or milliseconds
/// since the epoch.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            anyhow::anyhow!(
                "--from-time {text:?}: {e}; expected 2026-11-26T10:00:00Z or milliseconds since the epoch"
            )
        })?;
    Ok((at.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn list(brokers: &str, timeout: Duration) -> anyhow::Result<()> {
    let consumer: BaseConsumer = schemas::kafka::watermark_config(brokers)
        .create()
        .context("cannot create a Kafka client")?;
    println!(
        "{:<24} {:>9} {:>12} {:>12} {:>10}",
        "topic", "partition", "low", "high", "records"
    );
    for topic in Topic::ALL {
        let partitions = schemas::kafka::partition_count(&consumer, topic.name(), timeout)
            .with_context(|| format!("cannot reach the broker at {brokers}"))?;
        if partitions == 0 {
            println!(
                "{:<24} missing (run `replay-tools topics ensure`)",
                topic.name()
            );
            continue;
        }
        let mut total = 0i64;
        for partition in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic.name(), partition, timeout)
                .with_context(|| format!("watermarks of {}/{partition}", topic.name()))?;
            total += high - low;
            println!(
                "{:<24} {partition:>9} {low:>12} {high:>12} {:>10}",
                topic.name(),
                high - low
            );
        }
        println!(
            "{:<24} {:>9} {:>12} {:>12} {total:>10}",
            topic.name(),
            "all",
            "",
            ""
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_times() {
        assert_eq!(super::parse_time("1970-01-01T00:00:00Z").ok(), Some(0));
        assert_eq!(
            super::parse_time("2026-11-26T10:00:00.5Z").ok(),
            Some(1_795_687_200_500)
        );
        assert_eq!(
            super::parse_time("1700000000000").ok(),
            Some(1_700_000_000_000)
        );
        assert!(super::parse_time("yesterday").is_err());
        assert!(super::parse_time("2026-13-01T00:00:00Z").is_err());
        assert_eq!(
            super::parse_time("2026-11-26T11:00:00+01:00").ok(),
            Some(1_795_687_200_000)
        );
        // Multi-byte text where the fraction goes is an error, not a panic.
        assert!(super::parse_time("2026-11-26T10:00:00.é5Z").is_err());
        assert!(super::parse_time("2026-11-26T10:00:00.5€Z").is_err());
    }
}
