//! The fast channel (ARCHITECTURE.md, "durable-then-notify"): the room events the commands tier
//! publishes on Redis once the broker acknowledged them. Their call events are applied to the
//! call state at once, so a participant who joined and signals a moment later is already
//! known; the log (`crate::follow`) brings everything again and repairs whatever is lost here.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use schemas::EventCodec;
use tokio_util::sync::CancellationToken;

use crate::calls::Calls;
use crate::follow::Interest;
use crate::metrics::Metrics;

pub struct Fast {
    pub redis_url: String,
    /// A channel pattern: every room has its channel (`platform::cache::room_events_channel`).
    pub channel: String,
    pub codec: Arc<EventCodec>,
    pub calls: Calls,
    pub metrics: Metrics,
}

impl Fast {
    /// Listens until `stop`, subscribing again after any loss of the connection.
    pub async fn run(self, stop: CancellationToken) {
        let mut interest = Interest::new(|kind| kind.starts_with("call_"));
        while !stop.is_cancelled() {
            if let Err(e) = self.listen(&stop, &mut interest).await {
                tracing::debug!(error = %e, "fast channel lost; subscribing again");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn listen(
        &self,
        stop: &CancellationToken,
        interest: &mut Interest,
    ) -> Result<(), redis::RedisError> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.psubscribe(self.channel.as_str()).await?;
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                m = messages.next() => m,
            };
            let Some(message) = message else {
                return Ok(());
            };
            let payload = message.get_payload_bytes();
            if interest.skips(payload) {
                continue;
            }
            let Ok(event) = self.codec.decode(payload).await else {
                continue;
            };
            if interest.learn(payload, &event) {
                match self.calls.apply(&event).await {
                    Ok(_) => self.metrics.fast_call_events.inc(),
                    // The log brings it again.
                    Err(e) => tracing::debug!(error = %e, "fast call event not applied"),
                }
            }
        }
    }
}
