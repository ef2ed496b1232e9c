"""Reads records of the platform's topics with Confluent's own client and deserializer.

Usage: read.py BROKERS REGISTRY_URL < positions.json, where positions.json is a JSON list of
[topic, partition, offset]. Prints one JSON line per record: the position and the record as
Confluent's AvroDeserializer decoded it (writer schema fetched from the registry by the id in
the record), with timestamps as Unix milliseconds and UUIDs as strings, so the Rust side can
compare it field by field with its own decoder.
"""

import datetime
import json
import sys
import uuid

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def plain(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return int(value.timestamp() * 1000)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot print {type(value)}")


def main() -> int:
    brokers, registry = sys.argv[1], sys.argv[2]
    positions = json.load(sys.stdin)
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry}))
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "confluent-client-check",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        for topic, partition, offset in positions:
            consumer.assign([TopicPartition(topic, partition, offset)])
            message = consumer.poll(30)
            if message is None:
                print(f"nothing at {topic}/{partition}@{offset}", file=sys.stderr)
                return 1
            if message.error():
                print(f"{topic}/{partition}@{offset}: {message.error()}", file=sys.stderr)
                return 1
            value = deserialize(
                message.value(), SerializationContext(topic, MessageField.VALUE)
            )
            print(
                json.dumps(
                    {
                        "topic": topic,
                        "partition": partition,
                        "offset": message.offset(),
                        "value": value,
                    },
                    default=plain,
                ),
                flush=True,
            )
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
