"""docs/contract.md, "Size limit": a message of any size the broker accepted ends on the DLT (its
original bytes recoverable, byte for byte) and consumption goes on, on every real broker.

"The limit" is measured, not assumed: the largest body the foreign raw client gets the broker to
accept (Kafka: the producer's 1 MiB request check, below the broker's `message.max.bytes`;
RabbitMQ: `max_message_size`, which its refusal names; NATS: the server's `max_payload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import nats.errors
import pytest
from aio_pika.exceptions import ChannelPreconditionFailed
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import MessageSizeTooLargeError
from prometheus_client import CollectorRegistry

from brokers import create_transport
from brokers.fitting import H_BODY_REF, H_BODY_SHA256, H_BODY_SIZE, H_TRIMMED
from brokers.model import DeadLetter, Outgoing
from config import Settings
from tests.conftest import BROKERS
from tests.support.raw import KafkaRaw, NatsRaw, RabbitRaw, RawClient
from tests.support.system import BASE_PORT, SERVICES, System, eventually, uid

pytestmark = pytest.mark.contract
MARGIN = 64
"""The messages published are this much below the measured limit."""
DEAD_LETTER_TIMEOUT_S = 120.0
RABBIT_REFUSAL = re.compile(r"max size (\d+)")


@pytest.fixture(scope="module")
async def sized(broker: str, system: System, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    """The system the limit-sized messages go through. RabbitMQ's limit is 128 MiB: those go
    through a system of their own (its dead-letter listings would hold them up for the other
    tests), whose DLT queue is purged afterwards."""
    if broker != "rabbit":
        yield system
        return
    own = System(broker, tmp_path_factory.mktemp(f"sized-{broker}"), port_base=BASE_PORT[broker] + 40)
    try:
        await own.start()
        yield own
    finally:
        await own.aclose()
        connection = await aio_pika.connect(RabbitRaw().url)
        async with connection:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await (await channel.declare_queue(own.channel("order-events") + ".DLT", passive=True)).purge()


async def largest_accepted(raw: RawClient) -> int:
    """The largest body (no key, no headers) the raw client gets the broker to accept."""
    if isinstance(raw, RabbitRaw):
        return await _rabbit_limit(raw)
    assert isinstance(raw, KafkaRaw | NatsRaw)
    topic = uid("size-probe-")
    probe = _kafka_probe(raw, topic) if isinstance(raw, KafkaRaw) else _nats_probe(raw)
    low, high = 1, 1
    try:
        while await probe(high):  # doubles until refused
            low, high = high, high * 2
        while high - low > 1:  # low accepted, high refused
            middle = (low + high) // 2
            low, high = (middle, high) if await probe(middle) else (low, middle)
    finally:
        if isinstance(raw, KafkaRaw):  # the probe topic (auto-created) holds ~20 MiB
            admin = AIOKafkaAdminClient(bootstrap_servers=raw.url)
            await admin.start()
            with contextlib.suppress(Exception):
                await admin.delete_topics([topic])
            await admin.close()
    return low


def _kafka_probe(raw: KafkaRaw, topic: str) -> Callable[[int], Awaitable[bool]]:
    async def probe(size: int) -> bool:
        try:
            await raw.producer.send_and_wait(topic, b"x" * size)
        except MessageSizeTooLargeError:
            return False
        return True

    return probe


def _nats_probe(raw: NatsRaw) -> Callable[[int], Awaitable[bool]]:
    subject = uid("size-probe.")

    async def probe(size: int) -> bool:
        try:
            await raw.nc.publish(subject, b"x" * size)
            await raw.nc.flush()
        except nats.errors.MaxPayloadError:
            return False
        return True

    return probe


async def _rabbit_limit(raw: RabbitRaw) -> int:
    """RabbitMQ refuses a body over `max_message_size` with a precondition failure naming the
    limit: double the body until refused, read the limit, check it is accepted (unroutable
    publishes to the default exchange: confirmed and dropped)."""

    async def publish(size: int) -> str | None:
        channel = await raw.connection.channel(publisher_confirms=True)
        try:
            await channel.default_exchange.publish(aio_pika.Message(b"x" * size), routing_key=uid("size-probe-"))
        except ChannelPreconditionFailed as exc:
            return str(exc)
        finally:
            if not channel.is_closed:
                await channel.close()
        return None

    size = 1 << 20
    while (refusal := await publish(size)) is None:
        size *= 2
    match = RABBIT_REFUSAL.search(refusal)
    assert match, refusal
    limit = int(match.group(1))
    assert await publish(limit) is None
    return limit


async def dead_letters(system: System, limit: int = 10_000) -> list[DeadLetter]:
    """`<ns>.order-events.DLT` as `python -m brokers.dlt list` reads it (bodies kept apart resolved)."""
    settings = Settings(broker=system.broker, channel_namespace=system.namespace)
    transport = create_transport(settings, CollectorRegistry(), app_name="size-limit-test")
    await transport.broker.connect()
    try:
        return await transport.list_dead_letters(settings.channel("order-events"), limit)
    finally:
        await transport.stop_extras()
        await transport.broker.stop()


class _Letters(list[DeadLetter]):
    """Dead letters, shown by consumer, size and trimming (a failure message must not print 128 MiB)."""

    def __repr__(self) -> str:
        return repr([(d.headers.get("x-consumer"), len(d.body), d.headers.get(H_TRIMMED)) for d in self])


async def dead_lettered(system: System, body: bytes, consumers: set[str]) -> list[DeadLetter]:
    """The dead letters of `body` (compared byte for byte), once one per consumer of `consumers` is there."""

    async def probe() -> list[DeadLetter]:
        return _Letters(letter for letter in await dead_letters(system) if letter.body == body)

    found = await eventually(
        probe,
        lambda letters: {letter.headers.get("x-consumer") for letter in letters} >= consumers,
        timeout=DEAD_LETTER_TIMEOUT_S,
        interval=2.0,
        what=f"dead letters of a {len(body)}-byte message from {sorted(consumers)}",
    )
    return found


def assert_trimming_declared(letter: DeadLetter, body: bytes) -> None:
    """The envelope says what was done to make the copy fit: nothing, or a spilled (referenced) body."""
    trimmed = letter.headers.get(H_TRIMMED, "")
    if H_BODY_REF in letter.headers:
        assert "body-spilled" in trimmed.split(","), letter.headers
        assert letter.headers[H_BODY_SIZE] == str(len(body))
        assert letter.headers[H_BODY_SHA256]
    else:
        assert "body-spilled" not in trimmed, letter.headers


async def consumption_goes_on(system: System) -> None:
    product, order_id = uid("SIZE"), uid("after-big")
    await system.set_stock(product, 5)
    r = await system.post_order({"orderId": order_id, "productId": product, "quantity": 1})
    assert r.status_code == 202, r.text
    await system.wait_status(order_id, {"CONFIRMED"}, timeout=DEAD_LETTER_TIMEOUT_S)
    for name in SERVICES:
        await system.wait_ready(name, timeout=30)


async def test_messages_at_the_size_limit_are_dead_lettered_and_consumption_goes_on(
    sized: System, raw: RawClient
) -> None:
    if not isinstance(raw, KafkaRaw | NatsRaw | RabbitRaw):
        pytest.skip(f"{sized.broker}: no message size limit to reach (Redis: 512 MB per bulk string)")
    system = sized
    limit = await largest_accepted(raw)
    channel = system.channel("order-events")

    poison = bytes([0xFF, 0xFE]) + bytes(i % 251 for i in range(limit - MARGIN - 2))  # never JSON, never UTF-8
    await raw.publish(channel, poison)
    order_id = uid("big-fail")
    shell = {"orderId": order_id, "productId": "FAIL", "quantity": 1, "padding": ""}
    padding = limit - MARGIN - len(json.dumps(shell).encode())
    failing = json.dumps({**shell, "padding": "p" * padding}).encode()
    assert len(failing) == limit - MARGIN
    await raw.publish(channel, failing, key=order_id)

    letters = await dead_lettered(system, poison, {"inventory-service", "notification-service"})
    for letter in letters:
        assert letter.headers["x-attempts"] == "1"
        assert_trimming_declared(letter, poison)
    [failed] = await dead_lettered(system, failing, {"inventory-service"})
    assert failed.headers["x-attempts"] == "3"
    assert "FAIL" in failed.headers["x-exception-message"]
    assert_trimming_declared(failed, failing)

    await consumption_goes_on(system)


NATS_URL = "nats://localhost:4222"
nats_only = pytest.mark.skipif("nats" not in BROKERS, reason="NATS not under test")


@nats_only
@pytest.mark.usefixtures("brokers_running")
async def test_nats_publish_over_max_payload_with_headers_is_refused_and_the_connection_kept() -> None:
    """nats-py checks the body alone; the server counts the headers too, and closes the connection."""
    subject = uid("sizeguard-")
    transport = create_transport(Settings(broker="nats", broker_url=NATS_URL), CollectorRegistry(), app_name="t")
    await transport.broker.connect()
    nc = transport.broker.connection
    try:
        await nc.jetstream().add_stream(name=subject, subjects=[subject])
        body = b"x" * (nc.max_payload - 10)  # fits alone, not with its headers
        too_large, small = await transport.publish_batch(
            [Outgoing(subject, body, "k", {"event-id": uid("e-")}), Outgoing(subject, b"{}", "k", {})]
        )
        assert isinstance(too_large, nats.errors.MaxPayloadError), too_large
        assert small is None
        assert nc.is_connected
        assert (await nc.jetstream().stream_info(subject)).state.messages == 1
    finally:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(subject)
        await transport.broker.stop()


@nats_only
@pytest.mark.usefixtures("brokers_running")
async def test_nats_connection_closed_by_the_server_ends_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a server `-ERR` nats-py closes the connection for good: the service exits non-zero."""
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    transport = create_transport(Settings(broker="nats", broker_url=NATS_URL), CollectorRegistry(), app_name="t")
    await transport.broker.connect()
    nc = transport.broker.connection
    transport.broker.running = True  # as a started service's broker
    try:
        oversized = b"x" * nc.max_payload
        await nc._send_publish(uid("sizeguard-"), "", oversized, len(oversized), {"h": "v"})  # past our guard
        await eventually(
            lambda: asyncio.sleep(0, exits), lambda e: bool(e), timeout=10, what="the exit after the close"
        )
        assert exits[0] != 0
        assert nc.is_closed
    finally:
        transport.broker.running = False
        with contextlib.suppress(Exception):
            await transport.broker.stop()


@pytest.mark.skipif("rabbit" not in BROKERS, reason="RabbitMQ not under test")
async def test_rabbit_headers_near_the_frame_size_are_dead_lettered(system: System, raw: RawClient) -> None:
    """A copy's headers must fit one AMQP frame: RabbitMQ closes the connection for a larger one."""
    if not isinstance(raw, RabbitRaw):
        pytest.skip("RabbitMQ only")
    frame_max = raw.connection.transport.connection.connection_tune.frame_max
    body = b"\xff not json " + uid().encode()
    channel = await raw.connection.channel(publisher_confirms=True)
    try:
        exchange = await channel.get_exchange(system.channel("order-events"), ensure=True)
        headers: dict[str, Any] = {"big": "h" * (frame_max - 400)}  # fits the frame alone, not with an envelope
        await exchange.publish(aio_pika.Message(body, headers=headers, delivery_mode=2), routing_key="")
    finally:
        await channel.close()

    letters = await dead_lettered(system, body, {"inventory-service", "notification-service"})
    for letter in letters:
        assert "headers-dropped" in letter.headers[H_TRIMMED].split(","), letter.headers
        assert "big" not in letter.headers
    await consumption_goes_on(system)
