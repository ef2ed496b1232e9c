use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Metrics of the write path.
#[derive(Clone)]
pub struct WriterMetrics {
    pub commands: IntCounterVec,
    pub latency: HistogramVec,
    pub partitions_owned: IntGauge,
    /// Partitions of the room topic: every one needs a writer (`sum(commands_partitions_owned)`
    /// below it is an ownership gap).
    pub room_partitions: IntGauge,
    pub catchup_events: IntCounter,
    pub conflicts: IntCounter,
    pub undecodable: IntCounter,
    pub forwarded: IntCounter,
    pub rebuilds: IntCounter,
    pub fenced: IntCounter,
    pub transactions: prometheus::Histogram,
    pub transaction_records: prometheus::Histogram,
}

impl WriterMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            commands: IntCounterVec::new(
                Opts::new("commands_total", "Commands by name and outcome"),
                &["command", "outcome"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "command_duration_seconds",
                    "Time from a command reaching its room writer to the broker's acknowledgement",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["command"],
            )?,
            partitions_owned: IntGauge::new(
                "commands_partitions_owned",
                "Room partitions this instance writes",
            )?,
            room_partitions: IntGauge::new(
                "commands_room_partitions",
                "Partitions of the room topic, each needing one writer",
            )?,
            catchup_events: IntCounter::new(
                "commands_catchup_events_total",
                "Events applied while catching up partitions",
            )?,
            conflicts: IntCounter::new(
                "commands_log_conflicts_total",
                "Records that were not the next event of their room (a second writer)",
            )?,
            undecodable: IntCounter::new(
                "commands_undecodable_records_total",
                "Records the codec could not decode",
            )?,
            forwarded: IntCounter::new(
                "commands_forwarded_total",
                "Commands forwarded to the owner of their room",
            )?,
            rebuilds: IntCounter::new(
                "commands_partition_rebuilds_total",
                "Partition states rebuilt from the log after a failed append or an inconsistent decision",
            )?,
            transactions: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "commands_transaction_seconds",
                    "Time from beginning a room partition's transaction to its commit",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            transaction_records: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "commands_transaction_records",
                    "Records per committed transaction",
                )
                .buckets(vec![
                    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
                ]),
            )?,
            fenced: IntCounter::new(
                "commands_partitions_fenced_total",
                "Partition writers stopped because another instance fenced them (took the partition over)",
            )?,
        };
        registry.register(Box::new(m.commands.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.partitions_owned.clone()))?;
        registry.register(Box::new(m.room_partitions.clone()))?;
        registry.register(Box::new(m.catchup_events.clone()))?;
        registry.register(Box::new(m.conflicts.clone()))?;
        registry.register(Box::new(m.undecodable.clone()))?;
        registry.register(Box::new(m.forwarded.clone()))?;
        registry.register(Box::new(m.rebuilds.clone()))?;
        registry.register(Box::new(m.fenced.clone()))?;
        registry.register(Box::new(m.transactions.clone()))?;
        registry.register(Box::new(m.transaction_records.clone()))?;
        Ok(m)
    }
}
