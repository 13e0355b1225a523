"""The memory transport's own guarantees beyond the conformance suite (tests/transport): shared
work under one consumer name, fenced settlement of a crashed reader, retries kept by the server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from brokers import Outgoing, Subscription, Transport, create_transport
from brokers.memory.server import forget
from config import Settings
from tests.transport.harness import Ping, Recorder, eventually, ping


@pytest.fixture
async def url() -> AsyncIterator[str]:
    name = f"memory://unit-{uuid.uuid4().hex[:8]}"
    yield name
    forget(name)


def memory(url: str, **settings: int) -> Transport:
    return create_transport(Settings(broker="memory", broker_url=url, **settings), CollectorRegistry(), "unit")


async def publish(t: Transport, channel: str, items: list[tuple[int, str]]) -> None:
    outcomes = await t.publish_batch([Outgoing(channel, ping(n, key), key, {}) for n, key in items])
    assert outcomes == [None] * len(items)


async def test_subscriptions_of_one_consumer_name_share_the_work_each_key_in_order(url: str) -> None:
    handled: list[tuple[str, int, int]] = []
    transports = [memory(url), memory(url)]
    for i, t in enumerate(transports):

        async def record(event: Ping, i: int = i) -> None:
            handled.append((event.key, event.n, i))
            await asyncio.sleep(0)

        t.subscribe(Subscription("shared", "svc", record, Ping))
        await t.start()
    await publish(transports[0], "shared", [(n, f"k{n // 20}") for n in range(1000)])
    await eventually(lambda: len(handled) >= 1000, "every message handled")
    await asyncio.gather(*(t.stop() for t in transports))

    assert sorted(n for _, n, _ in handled) == list(range(1000)), "a message was handled twice or lost"
    assert {i for _, _, i in handled} == {0, 1}, "one subscription did all the work"
    for key in {k for k, _, _ in handled}:
        ns = [n for k, n, _ in handled if k == key]
        assert ns == sorted(ns), f"{key} out of order: {ns}"
    assert await transports[0].consumer_lag("shared", "svc") == 0


async def test_a_crashed_readers_late_settlement_is_ignored(url: str) -> None:
    stuck = asyncio.Event()

    async def hang(_: Ping) -> None:
        await stuck.wait()

    first, received = memory(url), Recorder(hang)
    first.subscribe(Subscription("orders", "svc", received, Ping))
    await first.start()
    await publish(first, "orders", [(n, "k") for n in range(5)])
    await eventually(lambda: received.received, "the first reader holds a message")
    await first.close()  # no drain: a crash
    stuck.set()
    await eventually(lambda: len(received.handled) == 5, "the crashed reader's handlers finish")
    await first.settled()  # its settlement ran, and must have changed nothing
    assert await first.consumer_lag("orders", "svc") == 5

    second, again = memory(url), Recorder()
    second.subscribe(Subscription("orders", "svc", again, Ping))
    await second.start()
    await eventually(lambda: sorted(again.handled_ns()) == list(range(5)), "the successor gets all five")
    await second.stop()


async def test_a_retry_waiting_on_the_server_reaches_the_next_transport(url: str) -> None:
    failed = False

    async def fail_once(_: Ping) -> None:
        nonlocal failed
        if not failed:
            failed = True
            raise RuntimeError("once")

    first, seen = memory(url, retry_delay_ms=200), Recorder(fail_once)
    first.subscribe(Subscription("orders", "svc", seen, Ping))
    await first.start()
    await publish(first, "orders", [(1, "k")])
    await eventually(lambda: failed, "the first delivery fails")
    await first.stop()
    assert seen.handled == []

    second, later = memory(url, retry_delay_ms=200), Recorder()
    second.subscribe(Subscription("orders", "svc", later, Ping))
    await second.start()
    await eventually(lambda: later.handled_ns() == [1], "the retry is delivered by the successor")
    assert later.received[0][1].n == 1
    await second.stop()
