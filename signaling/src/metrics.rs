//! This tier's own Prometheus series (the HTTP ones come from `platform::ops`).

use prometheus::{IntCounter, Registry};

#[derive(Clone)]
pub struct Metrics {
    /// Call events applied to the call state from the log.
    pub call_events: IntCounter,
    /// Call events applied from the fast channel (ahead of the log).
    pub fast_call_events: IntCounter,
    /// Records of the room log no reader schema of this build decodes.
    pub undecodable: IntCounter,
    /// Failed reads of the room log (retried).
    pub log_errors: IntCounter,
    /// Failed writes of the call state (retried, never skipped).
    pub store_errors: IntCounter,
    /// Signals passed on to a recipient's sockets.
    pub relayed: IntCounter,
    /// Participants taken out of calls because their sockets all dropped.
    pub dropped: IntCounter,
    /// Publishers admitted to a group call's SFU room.
    pub sfu_publishes: IntCounter,
    /// Subscriptions to a participant's media through the SFU.
    pub sfu_subscriptions: IntCounter,
    /// Leaves and ends carried out in Janus (sessions destroyed, kicks, rooms destroyed).
    pub sfu_cleanups: IntCounter,
    /// Janus requests that failed (refused or unanswered; cleanups are retried).
    pub janus_errors: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(Self {
            call_events: counter(
                "signaling_call_events_total",
                "call events applied to the call state",
            )?,
            fast_call_events: counter(
                "signaling_fast_call_events_total",
                "call events applied from the fast channel, ahead of the log",
            )?,
            undecodable: counter(
                "signaling_undecodable_records_total",
                "room log records this build cannot decode",
            )?,
            log_errors: counter(
                "signaling_log_errors_total",
                "failed reads of the room log (retried)",
            )?,
            store_errors: counter(
                "signaling_store_errors_total",
                "failed writes of the call state (retried)",
            )?,
            relayed: counter(
                "signaling_signals_relayed_total",
                "signals passed to a recipient's sockets",
            )?,
            dropped: counter(
                "signaling_disconnected_participants_total",
                "participants taken out of calls because their sockets all dropped",
            )?,
            sfu_publishes: counter(
                "signaling_sfu_publishes_total",
                "publishers admitted to a group call's SFU room",
            )?,
            sfu_subscriptions: counter(
                "signaling_sfu_subscriptions_total",
                "subscriptions to a participant's media through the SFU",
            )?,
            sfu_cleanups: counter(
                "signaling_sfu_cleanups_total",
                "leaves and ends carried out in Janus",
            )?,
            janus_errors: counter(
                "signaling_janus_errors_total",
                "Janus requests that failed (cleanups are retried)",
            )?,
        })
    }
}
