"""Provisioning on every real (single-node) broker: what `python -m brokers.provision` and the
services create, with which settings, and what they do with an object declared otherwise
(report it as a MISMATCH and leave it as it is, never fail).

Single node: Kafka topics get 3 partitions and replication factor 1 (no min.insync.replicas),
JetStream streams 1 replica; RabbitMQ queues are quorum queues whatever the node count."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import nats
import pytest
from aio_pika.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry

from brokers import Subscription, create_transport
from brokers.kafka.provision import COPY_HEADROOM_BYTES, DEFAULT_MESSAGE_MAX_BYTES
from brokers.nats import stream_name
from brokers.provisioning import CREATED, EXISTS, MISMATCH, WOULD_CREATE
from config import Settings
from services.events import OrderCreated
from tests.support.system import ROOT, System, uid

pytestmark = pytest.mark.contract

KAFKA, RABBIT, NATS = "localhost:9092", "amqp://guest:guest@localhost:5672/", "nats://localhost:4222"
RETRY = {"RETRY_MAX_ATTEMPTS": "3", "RETRY_DELAY_MS": "400", "RETRY_BACKOFF_MULTIPLIER": "2.0"}
LINE = re.compile(
    r"^(topic|stream|queue|exchange|object store) (\S+): (created|exists|MISMATCH|would create|FAILED)(?: \((.*)\))?$"
)
DELAY_ARGS = {"x-dead-letter-exchange": "", "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


async def provision_cli(broker: str, namespace: str, *args: str) -> tuple[int, dict[str, tuple[str, str]]]:
    """Run `python -m brokers.provision`; its exit status and {"<kind> <name>": (outcome, detail)}."""
    env = {**os.environ, **RETRY, "BROKER": broker, "CHANNEL_NAMESPACE": namespace}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brokers.provision", *args, cwd=ROOT, env=env, stdout=-1, stderr=-1
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    lines = out.decode().splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), f"unexpected output: {lines}\n{err.decode()}"
    return proc.returncode or 0, {f"{m[1]} {m[2]}": (m[3], m[4] or "") for m in parsed if m}


class Inspector:
    """Reads broker objects with the client libraries (never creating one) and deletes a namespace's."""

    def __init__(self, broker: str) -> None:
        self.broker = broker
        self.client: Any = None

    async def __aenter__(self) -> Inspector:
        if self.broker == "kafka":
            self.client = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
            await self.client.start()
        elif self.broker == "nats":
            self.client = await nats.connect(NATS)
        else:
            self.client = await aio_pika.connect(RABBIT)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.client.close()

    async def topic(self, name: str) -> tuple[int, int] | None:
        """(partitions, replication factor), None if missing (looked up without auto-creating it)."""
        if name not in await self.client.list_topics():
            return None
        [topic] = await self.client.describe_topics([name])
        return len(topic["partitions"]), max(len(p["replicas"]) for p in topic["partitions"])

    async def stream_replicas(self, name: str) -> int | None:
        try:
            info = await self.client.jetstream().stream_info(name)
        except NotFoundError:
            return None
        return int(info.config.num_replicas or 1)

    async def queue_type(self, name: str, arguments: dict[str, Any] | None = None) -> str | None:
        """ "quorum" when declaring the queue again as a quorum queue with `arguments` (all it has)
        is accepted, else RabbitMQ's refusal (naming the first differing argument); None if missing."""
        channel = await self.client.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except ChannelNotFoundEntity:
            return None
        channel = await self.client.channel()
        try:
            await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum", **(arguments or {})})
        except ChannelPreconditionFailed as exc:
            return str(exc)
        finally:
            if not channel.is_closed:
                await channel.close()
        return "quorum"

    async def delete(self, namespace: str) -> None:
        """Every topic / stream / queue and exchange of `namespace` (best effort)."""
        if self.broker == "kafka":
            topics = [t for t in await self.client.list_topics() if t.startswith(namespace + ".")]
            if topics:
                await self.client.delete_topics(topics)
        elif self.broker == "nats":
            js = self.client.jetstream()
            for info in await js.streams_info():
                if info.config.name.startswith((stream_name(namespace) + "_", f"OBJ_{stream_name(namespace)}-")):
                    await js.delete_stream(info.config.name)
        else:
            _, objects = await provision_cli("rabbit", namespace, "--dry-run", "--dlt-listener", "notification-service")
            channel = await self.client.channel()
            for kind, name in (key.split(" ", 1) for key in objects):
                if kind == "queue":
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)


@pytest.fixture
async def inspect(broker: str) -> AsyncIterator[Inspector]:
    if broker not in ("kafka", "rabbit", "nats"):
        pytest.skip(f"{broker}: no inspector of its broker objects here (Kafka, RabbitMQ and NATS clients only)")
    async with Inspector(broker) as inspector:
        yield inspector


@pytest.fixture
async def namespace(inspect: Inspector) -> AsyncIterator[str]:
    ns = uid("prov")
    yield ns
    await inspect.delete(ns)


async def test_provision_creates_what_the_services_use_once(broker: str, namespace: str, inspect: Inspector) -> None:
    def ch(name: str) -> str:
        return f"{namespace}.{name}"

    status, dry = await provision_cli(broker, namespace, "--dry-run", "--dlt-listener", "notification-service")
    assert status == 0
    assert {outcome for outcome, _ in dry.values()} == {WOULD_CREATE}

    if broker == "kafka":
        assert await inspect.topic(ch("order-events")) is None  # the dry run created nothing
    status, first = await provision_cli(broker, namespace, "--dlt-listener", "notification-service")
    assert status == 0
    assert first.keys() == dry.keys()
    assert {outcome for outcome, _ in first.values()} == {CREATED}, first

    if broker == "kafka":
        # retry and DLT topics: the local broker's default message.max.bytes + the headroom
        copy_limit = f"max.message.bytes {DEFAULT_MESSAGE_MAX_BYTES + COPY_HEADROOM_BYTES}"
        for topic in ("order-events", "order-events.DLT", "order-events.inventory-service.retry-400ms"):
            assert await inspect.topic(ch(topic)) == (3, 1), topic
            detail = "partitions 3, replication factor 1"  # 1 node: no min ISR
            assert first[f"topic {ch(topic)}"][1] == (detail if topic == "order-events" else f"{detail}, {copy_limit}")
        assert len(first) == 3 * 2 + 8 * 2  # channels + DLTs, 8 subscriptions × 2 retry tiers
    elif broker == "nats":
        for channel in ("order-events", "payment-events"):
            for stream in (stream_name(ch(channel)), stream_name(ch(channel)) + "-DLT"):
                assert await inspect.stream_replicas(stream) == 1, stream
        assert first[f"object store {stream_name(namespace)}-dead-letter-bodies"] == (CREATED, "replicas 1")
        assert len(first) == 3 * 2 + 1  # streams + the bucket of dead-letter bodies
    else:
        assert await inspect.queue_type(ch("order-events.DLT")) == "quorum"
        assert await inspect.queue_type(ch("order-events.DLT.notification-service")) == "quorum"
        delay = ch("order-events.inventory-service.retry-800ms")
        routing = {"x-message-ttl": 800, "x-dead-letter-routing-key": ch("order-events.inventory-service")}
        assert await inspect.queue_type(delay, {**DELAY_ARGS, **routing}) == "quorum"
        assert first[f"queue {delay}"] == (CREATED, "quorum, message TTL 800 ms, dead-lettering at-least-once")

    status, second = await provision_cli(broker, namespace, "--dlt-listener", "notification-service")
    assert status == 0
    assert second == {name: (EXISTS, "") for name in first}


async def test_an_object_declared_otherwise_is_reported_and_left_as_it_is(
    broker: str, namespace: str, inspect: Inspector
) -> None:
    if broker == "kafka":
        topic = f"{namespace}.order-events"
        await inspect.client.create_topics([NewTopic(topic, 2, 1)])
        status, outcomes = await provision_cli(broker, namespace)
        assert outcomes.pop(f"topic {topic}") == (MISMATCH, "partitions 2 (wanted 3)")
        assert await inspect.topic(topic) == (2, 1)
    elif broker == "rabbit":
        queue = f"{namespace}.order-events.DLT"
        channel = await inspect.client.channel()
        await channel.declare_queue(queue, durable=True)  # classic, as before provisioning
        status, outcomes = await provision_cli(broker, namespace)
        outcome, detail = outcomes.pop(f"queue {queue}")
        assert outcome == MISMATCH
        assert "inequivalent arg 'x-queue-type'" in detail
        assert "x-queue-type" in (await inspect.queue_type(queue) or "")  # still classic
    else:
        stream = stream_name(f"{namespace}.order-events")
        js = inspect.client.jetstream()
        await js.add_stream(name=stream, subjects=[f"{namespace}.order-events"], max_age=3600)
        status, outcomes = await provision_cli(broker, namespace)
        assert outcomes.pop(f"stream {stream}") == (EXISTS, "")  # replicas 1 as wanted; the rest is not ours
        assert (await js.stream_info(stream)).config.max_age == 3600
    assert status == 0
    assert {outcome for outcome, _ in outcomes.values()} == {CREATED}


async def test_rabbit_service_starts_on_queues_declared_otherwise(
    broker: str, namespace: str, inspect: Inspector
) -> None:
    """The upgrade from classic delay / DLT / listener queues: reported, used as they are, no crash."""
    if broker != "rabbit":
        pytest.skip("RabbitMQ: a redeclaration with other arguments closes the channel")
    settings = Settings(broker="rabbit", broker_url=RABBIT, channel_namespace=namespace, retry_delay_ms=400)
    channel = settings.channel("order-events")
    legacy = [f"{channel}.DLT", f"{channel}.DLT.notification-service", f"{channel}.inventory-service.retry-400ms"]
    declaring = await inspect.client.channel()
    for name in legacy:
        await declaring.declare_queue(name, durable=True)
    transport = create_transport(settings, CollectorRegistry(), app_name="t")

    async def ignore(_: Any) -> None:
        pass

    transport.subscribe(Subscription(channel, "inventory-service", ignore, OrderCreated))
    transport.listen_dead_letters(channel, "notification-service", ignore)
    await transport.broker.connect()
    try:
        outcomes = {(o.kind, o.name): o.outcome for o in await transport.provision()}
        await transport.broker.start()  # FastStream declares the listener queue passively now
        assert all(s.running for s in transport.broker.subscribers)
    finally:
        await transport.broker.stop()
    assert {name: outcomes["queue", name] for name in legacy} == dict.fromkeys(legacy, MISMATCH)
    assert outcomes["queue", f"{channel}.inventory-service"] == CREATED
    for name in legacy:
        assert "x-queue-type" in (await inspect.queue_type(name) or ""), name  # still classic


async def test_the_running_services_provisioned_what_they_use(system: System, inspect: Inspector) -> None:
    order_events = system.channel("order-events")
    if system.broker == "kafka":
        for topic in ("", ".DLT", ".inventory-service.retry-400ms", ".notification-service.retry-800ms"):
            assert await inspect.topic(order_events + topic) == (3, 1), topic
    elif system.broker == "nats":
        js = inspect.client.jetstream()
        for stream in (stream_name(order_events), stream_name(order_events) + "-DLT"):
            assert await inspect.stream_replicas(stream) == 1, stream
        durable = await js.consumer_info(stream_name(order_events), "inventory-service")
        assert not durable.config.num_replicas  # 0 / unset: the consumer follows its stream
    else:
        assert await inspect.queue_type(order_events + ".DLT") == "quorum"
        assert await inspect.queue_type(order_events + ".DLT.notification-service") == "quorum"
        consumer_args = {"x-delivery-limit": 10, "x-dead-letter-exchange": order_events + ".DLT"}
        assert await inspect.queue_type(order_events + ".inventory-service", consumer_args) == "quorum"
        routing = {"x-message-ttl": 400, "x-dead-letter-routing-key": order_events + ".inventory-service"}
        assert await inspect.queue_type(order_events + ".inventory-service.retry-400ms", {**DELAY_ARGS, **routing}) == (
            "quorum"
        )
