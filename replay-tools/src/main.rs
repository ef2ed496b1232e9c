//! Operator CLI. Today: make sure the topics exist with the right partition counts (run by
//! `deploy/local/up`), and show each topic's partitions and offsets.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rdkafka::ClientConfig;
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
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the platform's topics that are missing; leave existing ones alone.
    Ensure {
        /// Partitions of chat.room-events when it is created (default 12).
        #[arg(long, env = "CHAT_ROOM_PARTITIONS")]
        room_partitions: Option<i32>,
    },
    /// Show every platform topic with its partitions and low/high offsets.
    List,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let timeout = Duration::from_secs(cli.timeout_secs);
    match cli.command {
        Command::Topics {
            command: TopicsCommand::Ensure { room_partitions },
        } => {
            if let Some(p) = room_partitions
                && p < 1
            {
                bail!("--room-partitions must be at least 1, got {p}");
            }
            let states = ensure_topics(&cli.brokers, room_partitions, timeout)
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
    }
    Ok(())
}

fn list(brokers: &str, timeout: Duration) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
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
