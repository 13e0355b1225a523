"""Lag: messages waiting for one consumer name."""

from __future__ import annotations

from tests.transport.harness import Harness, Recorder, eventually, ping


async def test_lag_counts_what_a_stopped_consumer_has_not_settled(harness: Harness) -> None:
    channel, consumer = harness.channel(), harness.consumer()
    first, _ = harness.transport()
    seen = Recorder()
    harness.subscribe(first, channel, consumer, seen)
    await harness.start(first)
    await harness.publish(first, channel, [(ping(0), "k")])
    await eventually(lambda: seen.handled_ns() == [0], "the consumer is up and reads")
    await eventually(lambda: _lag_is(first, channel, consumer, 0), "lag 0 after the first message")
    await harness.stop(first)

    observer, _ = harness.transport()
    await harness.start(observer)
    await harness.publish(observer, channel, [(ping(n, f"k{n}"), f"k{n}") for n in range(1, 8)])
    await eventually(lambda: _lag_is(observer, channel, consumer, 7), "lag 7 while the consumer is stopped")

    second, _ = harness.transport()
    later = Recorder()
    harness.subscribe(second, channel, consumer, later)
    await harness.start(second)
    await eventually(lambda: set(later.handled_ns()) >= set(range(1, 8)), "the consumer catches up")
    await eventually(lambda: _lag_is(observer, channel, consumer, 0), "lag 0 once consumed")


async def _lag_is(t: object, channel: str, consumer: str, expected: int) -> bool:
    return await t.consumer_lag(channel, consumer) == expected  # type: ignore[attr-defined]
