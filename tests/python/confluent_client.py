#!/usr/bin/env python3
"""An independent Confluent client for contract tests.

Encodes and decodes records with the official confluent-kafka Python client
(its AvroSerializer / AvroDeserializer and SchemaRegistryClient), so the Rust
codec is checked against another implementation of the same wire format.

  consume --topic T --count N   prints N decoded records as JSON lines
  produce --topic T --schema F  reads JSON lines {"key": .., "value": ..} from stdin

JSON values use the shape serde gives the Rust records: timestamps as epoch
milliseconds, enums as strings, bytes as lists of integers.
"""

import argparse
import datetime
import json
import sys

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def to_json(value):
    """A decoded Avro value as plain JSON (the shape serde_json gives the Rust types)."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return int(round(value.timestamp() * 1000))
    if isinstance(value, (bytes, bytearray)):
        return list(value)
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def from_json(value, schema, named=None):
    """JSON (serde's shape) into what fastavro accepts for `schema`: bytes from integer lists."""
    named = {} if named is None else named
    if isinstance(schema, str):
        if schema == "bytes" and isinstance(value, list):
            return bytes(value)
        if schema in named:
            return from_json(value, named[schema], named)
        return value
    if isinstance(schema, list):
        if value is None:
            return None
        branches = [b for b in schema if b != "null"]
        return from_json(value, branches[0], named) if len(branches) == 1 else value
    kind = schema.get("type")
    if kind in ("record", "enum", "fixed"):
        name = schema["name"]
        named[name] = schema
        if "namespace" in schema:
            named[f"{schema['namespace']}.{name}"] = schema
    if kind == "record":
        return {
            f["name"]: from_json(value.get(f["name"]), f["type"], named)
            for f in schema["fields"]
            if f["name"] in value
        }
    if kind == "array":
        return [from_json(v, schema["items"], named) for v in value]
    if kind == "map":
        return {k: from_json(v, schema["values"], named) for k, v in value.items()}
    if kind == "bytes" and isinstance(value, list):
        return bytes(value)
    return value


def consume(args, registry):
    deserializer = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"oracle-{args.topic}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    seen = 0
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=args.timeout)
    try:
        while seen < args.count:
            if datetime.datetime.now() > deadline:
                sys.exit(f"only {seen} of {args.count} records on {args.topic} in {args.timeout}s")
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                sys.exit(f"consumer error: {message.error()}")
            value = deserializer(
                message.value(), SerializationContext(message.topic(), MessageField.VALUE)
            )
            key = message.key().decode() if message.key() is not None else None
            print(json.dumps({"key": key, "value": to_json(value)}, sort_keys=True), flush=True)
            seen += 1
    finally:
        consumer.close()


def produce(args, registry):
    with open(args.schema, encoding="utf-8") as f:
        schema_text = f.read()
    schema = json.loads(schema_text)
    serializer = AvroSerializer(
        registry,
        schema_text,
        conf={
            "auto.register.schemas": False,
            "use.latest.version": False,
            # The contract is TopicNameStrategy (<topic>-value). Newer clients default
            # to an "associated" strategy that asks a Confluent-only API first.
            "subject.name.strategy": topic_subject_name_strategy,
        },
    )
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all"})
    failures = []

    def delivered(error, _message):
        if error is not None:
            failures.append(str(error))

    count = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        record = json.loads(line)
        value = serializer(
            from_json(record["value"], schema),
            SerializationContext(args.topic, MessageField.VALUE),
        )
        producer.produce(args.topic, key=record.get("key"), value=value, on_delivery=delivered)
        count += 1
    remaining = producer.flush(args.timeout)
    if remaining or failures:
        sys.exit(f"produce failed: {remaining} unflushed, errors {failures}")
    print(json.dumps({"produced": count}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["consume", "produce"])
    parser.add_argument("--topic", required=True)
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--registry", default="http://localhost:8081/apis/ccompat/v7")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--schema", help="the .avsc to write with (produce)")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    registry = SchemaRegistryClient({"url": args.registry, "timeout": 10})
    if args.command == "consume":
        consume(args, registry)
    else:
        if not args.schema:
            parser.error("produce needs --schema")
        produce(args, registry)


if __name__ == "__main__":
    main()
