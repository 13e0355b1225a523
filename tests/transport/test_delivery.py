"""Publishing, consuming, ordering, crashes and graceful stops: the channel and subscription contract."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.transport.harness import DEADLINE_S, Harness, Ping, Recorder, eventually, ping

ROOT = Path(__file__).resolve().parents[2]


async def test_published_messages_wait_durably_for_a_stopped_consumer(harness: Harness) -> None:
    """Every publish is confirmed (None outcomes) and kept while the consumer name, known to the
    broker from an earlier run, has no reader: its next reader receives every message."""
    channel, consumer = harness.channel(), harness.consumer()
    earlier, _ = harness.transport()
    harness.subscribe(earlier, channel, consumer, Recorder())
    await harness.start(earlier)
    await harness.stop(earlier)

    producer, _ = harness.transport()
    await harness.start(producer)
    await harness.publish(producer, channel, [(ping(n, f"k{n % 4}"), f"k{n % 4}") for n in range(20)])

    later, _ = harness.transport()
    seen = Recorder()
    harness.subscribe(later, channel, consumer, seen)
    await harness.start(later)
    await eventually(lambda: set(seen.handled_ns()) >= set(range(20)), "every message reaches the consumer")


@pytest.mark.needs("reads-from-beginning")
async def test_a_new_consumer_name_reads_the_channel_from_its_beginning(harness: Harness) -> None:
    channel = harness.channel()
    producer, _ = harness.transport()
    await harness.start(producer)
    await harness.publish(producer, channel, [(ping(n, f"k{n % 4}"), f"k{n % 4}") for n in range(20)])

    consumer, _ = harness.transport()
    seen = Recorder()
    harness.subscribe(consumer, channel, harness.consumer(), seen)
    await harness.start(consumer)
    await eventually(lambda: set(seen.handled_ns()) >= set(range(20)), "every message reaches the new consumer")


async def test_each_keys_messages_are_handled_in_publish_order(harness: Harness) -> None:
    channel = harness.channel()
    t, _ = harness.transport()
    seen = Recorder()
    harness.subscribe(t, channel, harness.consumer(), seen)
    await harness.start(t)
    keys = ["a", "b", "c"]
    await harness.publish(t, channel, [(ping(n, key), key) for n in range(30) for key in keys])

    await eventually(lambda: len(set(seen.handled_ns())) == 30 and len(seen.handled) >= 90, "all 90 handled")
    for key in keys:
        order = list(dict.fromkeys(e.n for e in seen.handled if e.key == key))  # first deliveries, in order
        assert order == list(range(30)), f"key {key}: {order}"


async def test_messages_of_a_crashed_consumer_come_again_to_its_successor(harness: Harness) -> None:
    """The first transport receives messages and loses its connection without settling (no drain):
    a new transport with the same consumer name gets every one of them again."""
    channel, consumer = harness.channel(), harness.consumer()
    stuck = harness.gate()

    async def hang(_: Ping) -> None:
        await stuck.wait()

    first, _ = harness.transport()
    received = Recorder(hang)
    harness.subscribe(first, channel, consumer, received)
    await harness.start(first)
    await harness.publish(first, channel, [(ping(n), "k") for n in range(5)])
    await eventually(lambda: received.received, "the first consumer receives a message")
    await harness.crash(first)
    assert received.handled == []

    second, _ = harness.transport()
    again = Recorder()
    harness.subscribe(second, channel, consumer, again)
    await harness.start(second)
    await eventually(lambda: set(again.handled_ns()) >= set(range(5)), "the successor gets all five again")


async def test_drain_waits_for_the_slow_batch_and_settles_it(harness: Harness) -> None:
    """`drain()` during a slow batch returns once it is handled and settled: a successor with the
    same consumer name gets none of it again (a later message of the same key proves it read past)."""
    channel, consumer = harness.channel(), harness.consumer()
    started = asyncio.Event()

    async def slow(_: Ping) -> None:
        started.set()
        await asyncio.sleep(0.3)  # the handler's own work, not a wait for an effect

    first, _ = harness.transport()
    done = Recorder(slow)
    harness.subscribe(first, channel, consumer, done)
    await harness.start(first)
    await harness.publish(first, channel, [(ping(n), "k") for n in range(4)])
    await eventually(started.is_set, "the slow batch starts")
    await harness.stop(first)
    assert done.handled_ns(), "drain returned before the running batch was handled"
    assert done.received_ns() == done.handled_ns(), "drain returned while a handler was still running"

    second, _ = harness.transport()
    after = Recorder()
    harness.subscribe(second, channel, consumer, after)
    await harness.start(second)
    await harness.publish(second, channel, [(ping(99), "k")])
    await eventually(lambda: 99 in after.handled_ns(), "the successor reads past the drained messages")
    redelivered = set(after.handled_ns()) & set(done.handled_ns())
    assert not redelivered, f"handled before drain and delivered again: {sorted(redelivered)}"
    assert set(done.handled_ns()) | set(after.handled_ns()) >= set(range(4)), "a message was lost"


@pytest.mark.needs("survives-process-restart")
async def test_messages_of_a_killed_consumer_process_come_again_to_its_successor(harness: Harness) -> None:
    """A consumer process is killed (SIGKILL) while its handler holds a message: a new transport
    with the same consumer name gets every unsettled message again."""
    channel, consumer = harness.channel(), harness.consumer()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.transport.crash_child",
        harness.name,
        harness.namespace,
        channel,
        consumer,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        await asyncio.wait_for(_line(child.stdout, b"ready"), DEADLINE_S)
        publisher, _ = harness.transport()
        await harness.start(publisher)
        await harness.publish(publisher, channel, [(ping(n), "k") for n in range(5)])
        await asyncio.wait_for(_line(child.stdout, b"received "), DEADLINE_S)
    finally:
        child.kill()  # the process we started, by its handle
        await child.wait()

    successor, _ = harness.transport()
    again = Recorder()
    harness.subscribe(successor, channel, consumer, again)
    await harness.start(successor)
    await eventually(lambda: set(again.handled_ns()) >= set(range(5)), "the successor gets all five again", 90)


async def _line(stream: asyncio.StreamReader, prefix: bytes) -> bytes:
    """The child's next output line starting with `prefix` (its log lines are skipped)."""
    while True:
        line = await stream.readline()
        if not line:
            raise AssertionError(f"the consumer process ended before printing {prefix!r}")
        if line.startswith(prefix):
            return line
