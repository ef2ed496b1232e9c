//! The fast channel: room events the commands tier publishes on Redis right after the broker
//! acknowledged them (the local broker hands records to consumers far slower than it
//! acknowledges them). Every copy goes through the same room line as the log's, which releases
//! only `head + 1`; anything lost or reordered here is repaired by the log.
//!
//! The same subscription carries the ephemeral signals between nodes: typing indicators,
//! presence transitions and relayed call signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use schemas::EventCodec;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::limits::SocketCounts;
use crate::line::{Frame, Origin};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::protocol;
use crate::typing::Typing;

pub struct Fast {
    pub redis_url: String,
    /// `CHAT_REDIS_PREFIX`: the channels' names start with it.
    pub prefix: String,
    pub typing: Arc<Typing>,
    pub presence: Arc<Presence>,
    pub codec: Arc<EventCodec>,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    /// Where relayed call signals find their recipient's sockets.
    pub sockets: Arc<SocketCounts>,
    /// Set while the subscription is live (the node's readiness).
    pub subscribed: Arc<AtomicBool>,
}

impl Fast {
    /// Listens until `stop`, resubscribing after any loss of the connection.
    pub async fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let outcome = self.listen(&stop).await;
            self.subscribed.store(false, Ordering::Relaxed);
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "fast channel lost; resubscribing");
            }
            self.metrics.fast_reconnects.inc();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn listen(&self, stop: &CancellationToken) -> Result<(), redis::RedisError> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut pubsub = client.get_async_pubsub().await?;
        let events = platform::cache::room_events_channel(&self.prefix);
        let typing = crate::typing::channel(&self.prefix);
        let presence = crate::presence::channel(&self.prefix);
        let signals = platform::cache::call_signals_channel(&self.prefix);
        pubsub
            .subscribe(&[
                events.as_str(),
                typing.as_str(),
                presence.as_str(),
                signals.as_str(),
            ])
            .await?;
        self.subscribed.store(true, Ordering::Relaxed);
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                m = messages.next() => m,
            };
            let Some(message) = message else {
                return Ok(());
            };
            let name = message.get_channel_name();
            if name == typing {
                self.typing.receive(message.get_payload_bytes());
                continue;
            }
            if name == signals {
                self.deliver_signal(message.get_payload_bytes());
                continue;
            }
            if name == presence {
                let presence = self.presence.clone();
                let payload = message.get_payload_bytes().to_vec();
                tokio::spawn(async move { presence.receive(&payload).await });
                continue;
            }
            let Ok(event) = self.codec.decode(message.get_payload_bytes()).await else {
                self.metrics.undecodable.inc();
                continue;
            };
            self.metrics.fast_records.inc();
            let envelope = event.envelope();
            if let (Some(room), Some(seq)) = (envelope.room_id.as_deref(), envelope.seq) {
                let frame = Frame::from(protocol::event_frame(room, seq, &event));
                let fact = crate::tail::fact(&event);
                self.hub.offer(room, seq, frame, Origin::Fast, fact);
            }
        }
    }

    fn deliver_signal(&self, payload: &[u8]) {
        let outcome = match serde_json::from_slice::<platform::cache::RelayedSignal>(payload) {
            Ok(signal) => {
                let frame = Frame::from(signal.frame);
                if self.sockets.deliver(&signal.to, &frame) > 0 {
                    "delivered"
                } else {
                    "not_here"
                }
            }
            Err(_) => "malformed",
        };
        self.metrics.signals.with_label_values(&[outcome]).inc();
    }
}
