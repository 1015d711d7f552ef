"""Fixtures for oracle tests: the real binaries against the real local stack.

Each test gets its own topic prefix (topics applied, schemas registered with
sictl), so tests never see each other's records.
"""

import json
import os
import pathlib
import socket
import subprocess
import time
import uuid

import pytest
import requests
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

ROOT = pathlib.Path(__file__).resolve().parents[2]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
REGISTRY = os.environ.get("SCHEMA_REGISTRY_URL", "http://localhost:8081/apis/ccompat/v7")
PUBLIC = "https://si.example.test"
TOKEN = "oracle-primary-token"
SECONDARY = "oracle-secondary-token"
SHARED = "oracle-webhook-shared-key"


def binary(name):
    """A workspace binary from `SI_BIN_DIR` (default target/debug, which `cargo test`
    fills); built when missing."""
    path = pathlib.Path(os.environ.get("SI_BIN_DIR", ROOT / "target" / "debug")) / name
    if not path.exists():
        subprocess.run(["cargo", "build", "--quiet", "--workspace", "--bins"], cwd=ROOT, check=True, timeout=1800)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, deadline_s, what):
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        try:
            if condition():
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {deadline_s}s")


@pytest.fixture
def prefix():
    """A fresh topic prefix with every topic created and every schema registered."""
    value = f"py{uuid.uuid4().hex[:10]}."
    env = dict(os.environ, SI_TOPIC_PREFIX=value, SI_REPLICATION_FACTOR="1")
    sictl = binary("sictl")
    for args in (["topics", "apply"], ["schemas", "register"]):
        subprocess.run([sictl, *args], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    yield value
    # Delete this test's topics: thousands of leftover partitions on the one
    # local broker stall every produce of later tests.
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(value)]
    if mine:
        for future in admin.delete_topics(mine, operation_timeout=30).values():
            future.result()


class Ingress:
    def __init__(self, url, admin):
        self.url = url
        self.admin = admin

    def post(self, path_and_query, data, signature, content_type="application/x-www-form-urlencoded", headers=None):
        all_headers = {"Content-Type": content_type, "X-Twilio-Signature": signature}
        all_headers.update(headers or {})
        return requests.post(self.url + path_and_query, data=data, headers=all_headers, timeout=15)


@pytest.fixture
def ingress(prefix):
    port, admin = free_port(), free_port()
    env = dict(
        os.environ,
        SI_TOPIC_PREFIX=prefix,
        LISTEN_ADDR=f"127.0.0.1:{port}",
        ADMIN_ADDR=f"127.0.0.1:{admin}",
        PUBLIC_BASE_URL=PUBLIC,
        TWILIO_AUTH_TOKEN=TOKEN,
        TWILIO_AUTH_TOKEN_SECONDARY=SECONDARY,
        TWILIO_WEBHOOK_SHARED_SECRET=f"unused-key, {SHARED}",
        KAFKA_BOOTSTRAP_SERVERS=BOOTSTRAP,
        SCHEMA_REGISTRY_URL=REGISTRY,
        LOG_LEVEL="warn",
    )
    process = subprocess.Popen([binary("si-ingress")], env=env)
    try:
        wait_for(
            lambda: requests.get(f"http://127.0.0.1:{admin}/readyz", timeout=2).status_code == 200,
            60,
            "ingress ready",
        )
        yield Ingress(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def read_records(topic, count, timeout_s=30.0, settle_s=0.0):
    """Decodes records of `topic` with Confluent's AvroDeserializer (read_committed).

    Reads until `count` records arrived; then, if `settle_s` is set, keeps
    reading that long to catch any record beyond `count`.
    """
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": REGISTRY, "timeout": 10}))
    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": f"oracle-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out = []
    try:
        until = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < until:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            out.append(deserializer(message.value(), SerializationContext(topic, MessageField.VALUE)))
        settle_until = time.monotonic() + settle_s
        while settle_s and time.monotonic() < settle_until:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                out.append(deserializer(message.value(), SerializationContext(topic, MessageField.VALUE)))
    finally:
        consumer.close()
    return out


def dumps(value):
    return json.dumps(value, sort_keys=True, default=str)
