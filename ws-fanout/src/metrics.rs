use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The node's Prometheus metrics.
#[derive(Clone)]
pub struct Metrics {
    pub sockets: IntGauge,
    pub subscriptions: IntCounter,
    pub frames_in: IntCounterVec,
    pub frames_out: IntCounter,
    /// Room events released to subscribers, by the copy that arrived first (log or fast).
    pub released: IntCounterVec,
    /// Records the tail read, by partition: with interest routing only the partitions of the
    /// node's rooms appear.
    pub log_records: IntCounterVec,
    pub fast_records: IntCounter,
    /// Partitions the tail reads and rooms whose fast channel is subscribed (`crate::interest`).
    pub interest_partitions: IntGauge,
    pub interest_rooms: IntGauge,
    /// Times reading a partition could not start yet (Redis or the broker did not answer) and
    /// is tried again.
    pub interest_retries: IntCounter,
    pub fast_reconnects: IntCounter,
    pub log_gaps: IntCounter,
    pub undecodable: IntCounter,
    pub fallen_behind: IntCounter,
    pub resyncs: IntCounterVec,
    pub closes: IntCounterVec,
    /// Socket connections by outcome: accepted, or refused (auth, too_many_sockets).
    pub connections: IntCounterVec,
    /// From an event's time (its writer's clock) to its release to this node's sockets, once
    /// per event released by its own copy: the seed's "delivery latency".
    pub delivery: Histogram,
    pub kept_events: IntGauge,
    pub tail_lag: IntGauge,
    /// Typing indicators by outcome: relayed to the room, or absorbed by the per-socket limit.
    pub typing: IntCounterVec,
    /// Relayed call signals from the channel, by outcome: delivered to a socket here, for a
    /// user with no socket here, malformed.
    pub signals: IntCounterVec,
    /// Presence transitions this node decided, by status.
    pub presence: IntCounterVec,
    pub polls: IntCounter,
    /// `rate_limited_total{budget}`.
    pub refused: platform::limits::Refusals,
}

impl Metrics {
    /// Notes the delivery of an event of `occurred_at` (ms since the epoch) when `pushed` to
    /// any socket.
    pub fn delivered(&self, occurred_at: i64, pushed: usize) {
        if pushed == 0 {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.delivery
            .observe((now - occurred_at).max(0) as f64 / 1000.0);
    }

    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            sockets: IntGauge::new("ws_sockets", "Open authenticated sockets")?,
            subscriptions: IntCounter::new("ws_subscriptions_total", "Room subscriptions made")?,
            frames_in: IntCounterVec::new(
                Opts::new("ws_frames_in_total", "Client frames by type and outcome"),
                &["type", "outcome"],
            )?,
            frames_out: IntCounter::new("ws_frames_out_total", "Frames written to sockets")?,
            released: IntCounterVec::new(
                Opts::new(
                    "ws_events_released_total",
                    "Room events released, by the copy that arrived first",
                ),
                &["origin"],
            )?,
            log_records: IntCounterVec::new(
                Opts::new("ws_log_records_total", "Room records read by the tail"),
                &["partition"],
            )?,
            interest_partitions: IntGauge::new(
                "ws_interest_partitions",
                "Partitions of the room topic this node reads (those of its rooms)",
            )?,
            interest_rooms: IntGauge::new(
                "ws_interest_rooms",
                "Rooms whose fast channel this node is subscribed to",
            )?,
            interest_retries: IntCounter::new(
                "ws_interest_start_retries_total",
                "Times reading a partition could not start yet and is tried again",
            )?,
            fast_records: IntCounter::new(
                "ws_fast_records_total",
                "Room events received on the fast channel",
            )?,
            fast_reconnects: IntCounter::new(
                "ws_fast_reconnects_total",
                "Times the fast channel was (re)subscribed after a loss",
            )?,
            log_gaps: IntCounter::new(
                "ws_log_gaps_total",
                "Rooms whose log jumped past the node's head (their subscribers resync)",
            )?,
            undecodable: IntCounter::new(
                "ws_undecodable_total",
                "Records the tail could not decode",
            )?,
            fallen_behind: IntCounter::new(
                "ws_fallen_behind_total",
                "Sockets dropped from a room because their queue was full",
            )?,
            resyncs: IntCounterVec::new(
                Opts::new("ws_resyncs_total", "Resync frames sent, by reason"),
                &["reason"],
            )?,
            closes: IntCounterVec::new(
                Opts::new("ws_closes_total", "Sockets closed, by reason"),
                &["reason"],
            )?,
            connections: IntCounterVec::new(
                Opts::new("ws_connections_total", "Socket connections by outcome"),
                &["outcome"],
            )?,
            delivery: Histogram::with_opts(
                HistogramOpts::new(
                    "ws_delivery_seconds",
                    "From an event's time to its release to the sockets here",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            kept_events: IntGauge::new("ws_kept_events", "Events kept for resumes over all rooms")?,
            typing: IntCounterVec::new(
                Opts::new("ws_typing_total", "Typing indicators by outcome"),
                &["outcome"],
            )?,
            signals: IntCounterVec::new(
                Opts::new(
                    "ws_call_signals_total",
                    "Relayed call signals from the channel, by outcome",
                ),
                &["outcome"],
            )?,
            presence: IntCounterVec::new(
                Opts::new(
                    "ws_presence_transitions_total",
                    "Presence transitions this node decided, by status",
                ),
                &["status"],
            )?,
            polls: IntCounter::new("ws_polls_total", "Long polls answered")?,
            refused: platform::limits::refusals(registry)?,
            tail_lag: IntGauge::new(
                "ws_tail_lag_records",
                "Room-topic records the log tail has not handed to the hub yet",
            )?,
        };
        registry.register(Box::new(m.sockets.clone()))?;
        registry.register(Box::new(m.subscriptions.clone()))?;
        registry.register(Box::new(m.frames_in.clone()))?;
        registry.register(Box::new(m.frames_out.clone()))?;
        registry.register(Box::new(m.released.clone()))?;
        registry.register(Box::new(m.log_records.clone()))?;
        registry.register(Box::new(m.fast_records.clone()))?;
        registry.register(Box::new(m.interest_partitions.clone()))?;
        registry.register(Box::new(m.interest_rooms.clone()))?;
        registry.register(Box::new(m.interest_retries.clone()))?;
        registry.register(Box::new(m.fast_reconnects.clone()))?;
        registry.register(Box::new(m.log_gaps.clone()))?;
        registry.register(Box::new(m.undecodable.clone()))?;
        registry.register(Box::new(m.fallen_behind.clone()))?;
        registry.register(Box::new(m.resyncs.clone()))?;
        registry.register(Box::new(m.closes.clone()))?;
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.delivery.clone()))?;
        // Every outcome from the start: a rule's ratio finds its series before the first refusal.
        for outcome in ["accepted", "auth", "too_many_sockets"] {
            m.connections.with_label_values(&[outcome]);
        }
        registry.register(Box::new(m.kept_events.clone()))?;
        registry.register(Box::new(m.tail_lag.clone()))?;
        registry.register(Box::new(m.typing.clone()))?;
        registry.register(Box::new(m.signals.clone()))?;
        registry.register(Box::new(m.presence.clone()))?;
        registry.register(Box::new(m.polls.clone()))?;
        Ok(m)
    }
}
