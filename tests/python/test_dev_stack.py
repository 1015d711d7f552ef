"""`dev/stack`'s broker: its own request counts, read over JMX
(`kafka-requests`), and the garbage collector it runs with.

The counts come from the broker, not from the client, so the client here is
an independent one (confluent-kafka): what it sends must show up in the
counts taken around it.
"""

import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from conftest import BOOTSTRAP, ROOT

STACK = ROOT / "dev" / "stack"

# Creates a topic and produces one record per flush, so each record is a
# produce request of its own.
PRODUCE = """
import sys
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
for i in range(count):
    producer.produce(topic, value=b"%d" % i)
    assert producer.flush(30) == 0, "a record was not delivered"
admin.delete_topics([topic])[topic].result()
"""


def stack(*args, timeout=180):
    return subprocess.run(
        [STACK, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def local_stack():
    """What `dev/stack status` says of this checkout's stack, when it runs."""
    status = stack("status", timeout=60)
    if status.returncode != 0:
        pytest.skip("dev/stack's broker is not running (another broker is in use)")
    return status.stdout


def counts(output):
    table = {}
    for line in output.splitlines():
        kind, number = line.split(" ")
        table[kind] = int(number)
    return table


def test_the_requests_of_a_command_are_counted(local_stack):
    topic = f"py-requests-{uuid.uuid4().hex[:10]}"
    done = stack("kafka-requests", "--", sys.executable, "-c", PRODUCE, BOOTSTRAP, topic, "7")
    assert done.returncode == 0, done.stderr
    table = counts(done.stdout)
    assert table.get("Produce", 0) >= 7, table
    assert table.get("CreateTopics", 0) >= 1, table
    assert table.get("DeleteTopics", 0) >= 1, table
    assert list(table.values()) == sorted(table.values(), reverse=True), "busiest first"


def test_the_commands_failure_is_its_exit_status(local_stack):
    done = stack("kafka-requests", "--", "sh", "-c", "exit 3")
    assert done.returncode == 3, done.stderr


def test_all_requests_since_the_broker_started(local_stack):
    done = stack("kafka-requests")
    assert done.returncode == 0, done.stderr
    table = counts(done.stdout)
    assert table.get("ApiVersions", 0) >= 1, table
    assert table.get("Metadata", 0) >= 1, table


def broker_pid(status):
    found = re.search(r"^kafka: ready .*, pid (\d+),", status, re.MULTILINE)
    return found and found.group(1)


def test_the_broker_runs_the_parallel_collector(local_stack):
    """dev/stack's default (README, "The broker's garbage collector"), as
    the running JVM reports it, not as the command line asks."""
    if os.environ.get("SI_KAFKA_GC_OPTS"):
        pytest.skip("SI_KAFKA_GC_OPTS chooses the collector")
    pid = broker_pid(local_stack)
    assert pid, "dev/stack status names no broker pid"
    jcmd = shutil.which("jcmd")
    if jcmd is None:
        pytest.skip("no jcmd on PATH")
    flags = subprocess.run(
        [jcmd, pid, "VM.flags"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "-XX:+UseParallelGC" in flags, flags
    assert "-XX:+UseG1GC" not in flags, flags
