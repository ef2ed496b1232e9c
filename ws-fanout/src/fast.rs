//! The fast channel: room events the commands tier publishes on Redis right after the broker
//! acknowledged them (the local broker hands records to consumers far slower than it
//! acknowledges them). Every copy goes through the same room line as the log's, which releases
//! only `head + 1`; anything lost or reordered here is repaired by the log.
//!
//! Each room has its channel and the node subscribes to the rooms it follows
//! (`crate::interest`), as they come and go, on the same connection; after a reconnection it
//! subscribes to all of them again. A subscription made after an event was published misses
//! that copy, which the log brings.
//!
//! The same connection carries the ephemeral signals between nodes: typing indicators (a
//! channel per room, followed with the room's events), presence transitions and relayed call
//! signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::PubSubSink;
use schemas::EventCodec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::interest::{FastCommand, Interest};
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
    /// The rooms followed, and the changes to them as they come.
    pub interest: Arc<Interest>,
    pub commands: mpsc::UnboundedReceiver<FastCommand>,
}

/// Rooms whose subscriptions change with one command at most (two channels each, ~100 KB).
const ROOMS_PER_COMMAND: usize = 1000;

impl Fast {
    /// Listens until `stop`, resubscribing after any loss of the connection.
    pub async fn run(mut self, stop: CancellationToken) {
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

    async fn listen(&mut self, stop: &CancellationToken) -> Result<(), redis::RedisError> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let (mut sink, mut messages) = client.get_async_pubsub().await?.split();
        let room_prefix = platform::cache::room_events_channel(&self.prefix, "");
        let typing_prefix = crate::typing::channel(&self.prefix, "");
        let presence = crate::presence::channel(&self.prefix);
        let signals = platform::cache::call_signals_channel(&self.prefix);
        sink.subscribe(&[presence.as_str(), signals.as_str()])
            .await?;
        // Commands queued before this snapshot apply again after it, in order, so the
        // subscriptions end as the interest stands.
        let rooms = self.interest.rooms();
        self.change(&mut sink, rooms, true).await?;
        self.subscribed.store(true, Ordering::Relaxed);
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ok(()) };
                    self.follow(&mut sink, command).await?;
                    continue;
                }
                m = messages.next() => m,
            };
            let Some(message) = message else {
                return Ok(());
            };
            let name = message.get_channel_name();
            if name.starts_with(&typing_prefix) {
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
            if !name.starts_with(&room_prefix) {
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
                let pushed = self.hub.offer(room, seq, frame, Origin::Fast, fact);
                self.metrics.delivered(envelope.occurred_at, pushed);
            }
        }
    }

    /// Applies `first` and whatever else is queued, in order, runs of one kind in one command.
    async fn follow(
        &mut self,
        sink: &mut PubSubSink,
        first: FastCommand,
    ) -> Result<(), redis::RedisError> {
        let mut run = Vec::new();
        let mut subscribing = matches!(first, FastCommand::Subscribe(_));
        let mut next = Some(first);
        while let Some(command) = next {
            let (room, subscribe) = match command {
                FastCommand::Subscribe(room) => (room, true),
                FastCommand::Unsubscribe(room) => (room, false),
            };
            if subscribe != subscribing || run.len() >= ROOMS_PER_COMMAND {
                self.change(sink, std::mem::take(&mut run), subscribing)
                    .await?;
                subscribing = subscribe;
            }
            run.push(room);
            next = self.commands.try_recv().ok();
        }
        self.change(sink, run, subscribing).await
    }

    async fn change(
        &self,
        sink: &mut PubSubSink,
        rooms: Vec<String>,
        subscribe: bool,
    ) -> Result<(), redis::RedisError> {
        for chunk in rooms.chunks(ROOMS_PER_COMMAND) {
            // A room's events and its typing indicators.
            let channels: Vec<String> = chunk
                .iter()
                .flat_map(|room| {
                    [
                        platform::cache::room_events_channel(&self.prefix, room),
                        crate::typing::channel(&self.prefix, room),
                    ]
                })
                .collect();
            if subscribe {
                sink.subscribe(channels).await?;
            } else {
                sink.unsubscribe(channels).await?;
            }
        }
        Ok(())
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
