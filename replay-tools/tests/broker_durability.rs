//! Durability of the broker as `deploy/local` runs it: every record the broker acknowledged
//! (idempotent producer, acks=all) is still there, in order, after `kill -9` of the broker and
//! a restart through `deploy/local/up`. Runs against a private broker (own port, own data
//! directory) so killing it disturbs no other test.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::kafka::producer_config;
use schemas::topics::ROOM_EVENTS;
use test_support::{PrivateStack, free_port};

/// (partition, offset) -> payload of every acknowledged record.
type Acked = BTreeMap<(i32, i64), String>;

async fn produce(
    producer: &FutureProducer,
    from: usize,
    count: usize,
    acked: &mut Acked,
) -> anyhow::Result<()> {
    let sends: Vec<_> = (from..from + count)
        .map(|i| {
            let payload = format!("record-{i}");
            let key = format!("room-{}", i % 37);
            let producer = producer.clone();
            tokio::spawn(async move {
                let record = FutureRecord::to(ROOM_EVENTS).key(&key).payload(&payload);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map(|d| (d.partition, d.offset, payload.clone()))
                    .map_err(|(e, _)| anyhow::anyhow!("{payload}: {e}"))
            })
        })
        .collect();
    for send in sends {
        let (partition, offset, payload) = send.await??;
        assert!(
            acked.insert((partition, offset), payload).is_none(),
            "offset acknowledged twice"
        );
    }
    Ok(())
}

/// Reads every partition from offset 0 up to its high watermark.
fn read_all(brokers: &str) -> anyhow::Result<Acked> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "durability-check")
        .set("enable.auto.commit", "false")
        .create()?;
    let partitions =
        schemas::kafka::partition_count(&consumer, ROOM_EVENTS, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = BTreeMap::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(ROOM_EVENTS, p, Duration::from_secs(10))?;
        if high > 0 {
            assignment.add_partition_offset(ROOM_EVENTS, p, Offset::Beginning)?;
            remaining.insert(p, high);
        }
    }
    consumer.assign(&assignment)?;
    let mut seen = Acked::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading back timed out; missing {remaining:?}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message?;
            let payload = String::from_utf8(message.payload().unwrap_or_default().to_vec())?;
            seen.insert((message.partition(), message.offset()), payload);
            if remaining
                .get(&message.partition())
                .is_some_and(|&high| message.offset() + 1 >= high)
            {
                remaining.remove(&message.partition());
            }
        }
    }
    Ok(seen)
}

#[tokio::test]
async fn acknowledged_records_survive_kill_9_of_the_broker() -> anyhow::Result<()> {
    let port = free_port();
    let stack = PrivateStack::new(&[("CHAT_KAFKA_PORT", port.to_string())])?;
    stack.up(&["broker"])?;
    let brokers = format!("127.0.0.1:{port}");

    // Running `up` again while the broker runs is harmless: same process, topics untouched.
    let pid = stack.pid("broker-1")?;
    let again = stack.up(&["broker"])?;
    assert_eq!(stack.pid("broker-1")?, pid);
    assert!(!again.contains("created"), "{again}");

    let mut acked = Acked::new();
    {
        let producer: FutureProducer = producer_config(&brokers).create()?;
        produce(&producer, 0, 2_000, &mut acked).await?;
    }

    stack.kill9("broker-1")?;
    stack.up(&["broker"])?;
    assert_ne!(stack.pid("broker-1")?, pid);

    let after_crash = read_all(&brokers)?;
    for (position, payload) in &acked {
        assert_eq!(
            after_crash.get(position),
            Some(payload),
            "acknowledged record at {position:?} lost or changed"
        );
    }
    assert_eq!(
        after_crash.len(),
        acked.len(),
        "records appeared that were never acknowledged"
    );

    // The restarted broker keeps appending after the surviving records, per partition.
    let producer: FutureProducer = producer_config(&brokers).create()?;
    let mut more = Acked::new();
    produce(&producer, 2_000, 500, &mut more).await?;
    for (partition, offset) in more.keys() {
        let last_before = acked
            .keys()
            .filter(|(p, _)| p == partition)
            .map(|(_, o)| *o)
            .max()
            .unwrap_or(-1);
        assert!(
            *offset > last_before,
            "partition {partition}: offset {offset} reused (had {last_before})"
        );
    }
    acked.extend(more);
    assert_eq!(read_all(&brokers)?, acked);
    Ok(())
}
