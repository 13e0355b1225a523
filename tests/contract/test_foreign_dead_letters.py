"""docs/contract.md, dead-letter tools: dead letters written by other frameworks.

A record that Spring Kafka's DeadLetterPublishingRecoverer would put on `<channel>.DLT` (its
binary headers, written here by a raw Kafka client) and a message that RabbitMQ dead-lettered
itself (`x-death`) are listed by `python -m brokers.dlt` with our envelope fields and lossless
header values, and replayed with the original bytes, key and application headers only.
Each test runs on the broker whose framework it concerns, in a namespace of its own (no
services: the tool alone, so no other test's dead letters are replayed).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aio_pika
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from brokers.foreign_headers import unshown
from tests.conftest import BROKERS
from tests.support.system import ROOT, eventually, uid

pytestmark = [pytest.mark.contract, pytest.mark.usefixtures("brokers_running")]
KAFKA = "localhost:9092"
RABBIT = "amqp://guest:guest@localhost:5672/"


def on(*wanted: str) -> pytest.MarkDecorator:
    """Run the test on these brokers only, when they are under test."""
    return pytest.mark.parametrize("dlt_broker", [b for b in BROKERS if b in wanted])


def dlt_command(broker: str, namespace: str, *args: str) -> list[dict[str, Any]]:
    env = {**os.environ, "BROKER": broker, "CHANNEL_NAMESPACE": namespace}
    out = subprocess.run(
        [sys.executable, "-m", "brokers.dlt", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


# --- Spring Kafka ---------------------------------------------------------------------------
APPLICATION_HEADERS = [
    ("__TypeId__", b"com.example.OrderEvent"),
    ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("x-tenant", b"\xff\x00\x01\x02\x03\x04"),  # 6 bytes, not UTF-8
    ("x-tenant", b"base64:not-really"),
]


def spring_headers(original_topic: str) -> list[tuple[str, bytes]]:
    """What DeadLetterPublishingRecoverer adds after non-blocking retries (KafkaHeaders.DLT_*,
    RetryTopicHeaders): ints and longs big-endian, as Java's ByteBuffer writes them."""
    return [
        ("kafka_dlt-original-topic", original_topic.encode()),
        ("kafka_dlt-original-partition", struct.pack(">i", 2)),
        ("kafka_dlt-original-offset", struct.pack(">q", 4_294_967_301)),
        ("kafka_dlt-original-timestamp", struct.pack(">q", 1_764_672_000_123)),
        ("kafka_dlt-original-timestamp-type", b"CreateTime"),
        ("kafka_dlt-original-consumer-group", b"inventory-group"),
        ("kafka_dlt-exception-fqcn", b"org.springframework.kafka.listener.ListenerExecutionFailedException"),
        ("kafka_dlt-exception-cause-fqcn", b"java.lang.IllegalStateException"),
        ("kafka_dlt-exception-message", "Listener failed; no stock for P123 – €".encode()),
        ("kafka_dlt-exception-stacktrace", b"java.lang.IllegalStateException: no stock\n\tat a.B.c(B.java:1)"),
        ("retry_topic-attempts", struct.pack(">i", 4)),  # the next attempt: 3 were made
        ("retry_topic-backoff-timestamp", struct.pack(">q", 1_764_672_001_000)),
        ("retry_topic-original-timestamp", struct.pack(">q", 1_764_672_000_123)),
    ]


@pytest.fixture
async def kafka_admin() -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    yield admin
    await admin.close()


async def read_all(topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        end = (await consumer.end_offsets([tp]))[tp]
        records: list[Any] = []
        while len(records) < end:
            batch = await consumer.getmany(tp, timeout_ms=500)
            records.extend(batch.get(tp, []))
        return records
    finally:
        await consumer.stop()


@on("kafka")
async def test_spring_kafka_dead_letter_is_listed_mapped_and_replayed_exactly(
    dlt_broker: str, kafka_admin: AIOKafkaAdminClient
) -> None:
    namespace = uid("tf")
    dlt, target = f"{namespace}.order-events.DLT", f"{namespace}.spring-orders"
    await kafka_admin.create_topics([NewTopic(dlt, 1, 1), NewTopic(target, 1, 1)])
    body = b'{"orderId": "1001", "productId": "P123", "quantity": 2}'
    key = b"1001\xff"  # a key that is not text either
    headers = [*spring_headers(target), *APPLICATION_HEADERS]
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(dlt, body, key=key, headers=headers)
    finally:
        await producer.stop()

    [listed] = dlt_command(dlt_broker, namespace, "list", "order-events", "--json")

    assert listed["envelope"] == {
        "source": "spring-kafka",
        "originalDestination": target,
        "originalPartition": 2,
        "originalOffset": 4_294_967_301,
        "originalTimestamp": "2025-12-02T10:40:00.123Z",
        "consumer": "inventory-group",
        "exceptionType": "org.springframework.kafka.listener.ListenerExecutionFailedException",
        "exceptionCauseType": "java.lang.IllegalStateException",
        "exceptionMessage": "Listener failed; no stock for P123 – €",
        "attempts": 3,
        "failedAt": None,
    }
    shown = listed["headers"]
    assert shown["kafka_dlt-original-partition"] == "\x00\x00\x00\x02"  # valid UTF-8: text, JSON-escaped
    assert shown["kafka_dlt-original-timestamp"] == "base64:AAABmt6l0Hs="  # not UTF-8
    assert shown["x-tenant"] == "base64:YmFzZTY0Om5vdC1yZWFsbHk="  # text that starts with the marker
    assert shown["kafka_dlt-exception-message"] == "Listener failed; no stock for P123 – €"
    assert shown["kafka_dlt-exception-stacktrace"].startswith("java.lang.IllegalStateException: no stock\n\tat")
    for name, value in headers[:-2]:  # the repeated x-tenant shows its last value
        assert unshown(shown[name]) == value, name
    assert unshown(shown["x-tenant"]) == b"base64:not-really"
    assert unshown(listed["key"]) == key
    assert listed["body"] == json.loads(body)

    [replayed] = dlt_command(dlt_broker, namespace, "replay", "order-events", "--json")
    assert replayed["position"] == listed["position"]

    [record] = await eventually(lambda: read_all(target), lambda records: len(records) == 1, what="replayed record")
    assert record.value == body
    assert record.key == key
    assert list(record.headers) == APPLICATION_HEADERS
    assert dlt_command(dlt_broker, namespace, "replay", "order-events") == []


# --- RabbitMQ -------------------------------------------------------------------------------
@pytest.fixture
async def rabbit() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(RABBIT)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


@on("rabbit")
async def test_message_dead_lettered_by_rabbitmq_is_listed_with_x_death_fields(
    dlt_broker: str, rabbit: aio_pika.abc.AbstractChannel
) -> None:
    namespace = uid("tf")
    channel, foreign = f"{namespace}.order-events", f"{namespace}.order-events.foreign"
    exchange = await rabbit.declare_exchange(channel, aio_pika.ExchangeType.FANOUT, durable=True)
    dlx = await rabbit.declare_exchange(f"{channel}.DLT", aio_pika.ExchangeType.FANOUT, durable=True)
    dlt_queue = await rabbit.declare_queue(f"{channel}.DLT", durable=True, arguments={"x-queue-type": "quorum"})
    await dlt_queue.bind(dlx)
    queue = await rabbit.declare_queue(
        foreign, durable=True, arguments={"x-dead-letter-exchange": dlx.name, "x-expires": 600_000}
    )
    await queue.bind(exchange)
    try:
        body = b'{"orderId": "1002", "productId": "P123", "quantity": 1}'
        await exchange.publish(
            aio_pika.Message(body, headers={"x-tenant": "t1", "trace-bytes": bytearray(b"\xfe\x01")}),
            routing_key="OrderCreated",
        )
        incoming = await eventually(lambda: queue.get(fail=False), lambda m: m is not None, what="the message")
        assert incoming is not None
        await incoming.reject(requeue=False)  # RabbitMQ dead-letters it, adding x-death

        async def waiting() -> int:
            declared = await rabbit.declare_queue(dlt_queue.name, passive=True)
            return int(declared.declaration_result.message_count or 0)

        await eventually(waiting, lambda n: n == 1, what="RabbitMQ's dead letter on the DLT queue")

        [listed] = dlt_command(dlt_broker, namespace, "list", "order-events", "--json")

        fields = listed["envelope"]
        assert {k: fields[k] for k in ("source", "originalDestination", "consumer", "exceptionType", "attempts")} == {
            "source": "rabbitmq",
            "originalDestination": channel,
            "consumer": foreign,
            "exceptionType": "rejected",
            "attempts": 1,
        }
        datetime.fromisoformat(fields["failedAt"])
        [death] = listed["headers"]["x-death"]
        assert (death["queue"], death["reason"], death["routing-keys"]) == (foreign, "rejected", ["OrderCreated"])
        assert listed["headers"]["x-tenant"] == "t1"
        assert unshown(listed["headers"]["trace-bytes"]) == b"\xfe\x01"

        [replayed] = dlt_command(dlt_broker, namespace, "replay", "order-events")
        assert replayed["envelope"]["source"] == "rabbitmq"
        again = await eventually(lambda: queue.get(fail=False), lambda m: m is not None, what="the replayed message")
        assert again is not None
        await again.ack()
        assert again.body == body
        assert not any(k.startswith(("x-death", "x-first-death", "x-last-death")) for k in again.headers or {})
        assert (again.headers or {})["x-tenant"] == "t1"
        assert bytes((again.headers or {})["trace-bytes"]) == b"\xfe\x01"
    finally:
        for name in (foreign, dlt_queue.name):
            await rabbit.queue_delete(name)
        for name in (dlx.name, channel):
            await rabbit.exchange_delete(name)
