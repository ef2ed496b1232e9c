//! Benchmarks. Each prints its numbers and writes `bench/results/<name>.json`; none asserts on
//! speed (tests never fail because a machine is slow).

mod calls;
mod client;
mod commands;
mod delivery;
mod floor;
mod frames;
mod history;
mod load;
mod peer;
mod receivers;
mod replay;
mod report;
mod scenario;
mod sockets;
mod summary;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bench", about = "Chat platform benchmarks")]
struct Cli {
    /// Where result JSON files go.
    #[arg(long, default_value = "bench/results", global = true)]
    results: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sustained accepted messages/s through the commands tier to the broker, with latency.
    Commands(commands::Args),
    /// Rebuild rate of each read model from the log (`replay-tools rebuild`), 100k to 1M events.
    Replay(replay::Args),
    /// History pages and searches on one room of 1,000,000 messages, through query-api.
    History(history::Args),
    /// The broker's own produce-to-consume latency at 200, 1K and 5K records/s.
    Floor(floor::Args),
    /// Post-to-socket delivery latency as the rate climbs, beside the broker's own floor.
    Delivery(delivery::Args),
    /// The scenarios (seed, burst, soak, moonshot, replay) against ours and the Socket.io
    /// peer; rewrites the README's performance table and chart.
    Scenarios(scenario::Args),
    /// Rewrites the README's performance table and chart from the result files alone.
    Summary,
    /// 1:1 call set-up time (direct, relayed) and the relayed participants coturn carries.
    Calls(calls::Args),
    /// Idle sockets one fan-out node holds, RSS per socket, connection set-up latency.
    Sockets(sockets::Args),
    /// One client process of `sockets` (started by it).
    #[command(hide = true)]
    SocketsWorker(sockets::WorkerArgs),
    /// One receiving process of a load run (started by it; talks JSON lines on stdin/stdout).
    #[command(hide = true)]
    LoadReceiver,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Commands(args) => commands::run(args, &cli.results).await,
        Command::Replay(args) => replay::run(args, &cli.results).await,
        Command::Floor(args) => floor::run(args, &cli.results).await,
        Command::Delivery(args) => delivery::run(args, &cli.results).await,
        Command::History(args) => history::run(args, &cli.results).await,
        Command::Scenarios(args) => scenario::run(args, &cli.results).await,
        Command::Summary => summary::write(&cli.results, true),
        Command::Sockets(args) => sockets::run(args, &cli.results).await,
        Command::Calls(args) => calls::run(args, &cli.results).await,
        Command::SocketsWorker(args) => sockets::worker(args).await,
        Command::LoadReceiver => receivers::worker().await,
    }
}
