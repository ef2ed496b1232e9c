//! Writing prepared events (or raw bytes) to a broker, as the writer would.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::{DomainEvent, EventCodec};

pub struct Writer {
    producer: FutureProducer,
    codec: EventCodec,
}

impl Writer {
    pub async fn new(brokers: &str, registry_url: &str) -> anyhow::Result<Self> {
        let codec = EventCodec::new(registry_url)?;
        codec.register_all().await?;
        Ok(Self {
            producer: schemas::kafka::producer_config(brokers).create()?,
            codec,
        })
    }

    /// Appends the events in order (per key), waiting for every acknowledgement.
    pub async fn write(&self, events: &[DomainEvent]) -> anyhow::Result<()> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let payload = self.codec.encode(event).await?;
            let key = event.key().unwrap_or_default().to_string();
            let record = FutureRecord::to(event.topic().name())
                .key(&key)
                .payload(&payload);
            pending.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow::anyhow!("{e}"))?,
            );
        }
        for delivery in pending {
            delivery.await?.map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }

    /// Appends raw bytes under `key` (a poison record).
    pub async fn write_raw(&self, topic: &str, key: &str, payload: &[u8]) -> anyhow::Result<()> {
        self.producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}
