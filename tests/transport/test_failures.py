"""The failure policy carried out natively: delayed retries, dead letters, poison, replay."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import datetime

import pytest

from brokers import DeadLetter, Transport
from tests.transport.harness import Harness, Ping, Recorder, eventually, ping

ENVELOPE = (
    "x-original-destination",
    "x-consumer",
    "x-exception-type",
    "x-exception-message",
    "x-attempts",
    "x-failed-at",
)


def sample(registry: object, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return 0.0 if value is None else float(value)


@pytest.mark.parametrize("spans", [False, True], ids=["", "spans"])
async def test_a_failing_message_is_retried_after_the_delay_until_it_succeeds(harness: Harness, spans: bool) -> None:
    channel, consumer = harness.channel(), harness.consumer()
    t, registry = harness.transport(retry_delay_ms=300, max_attempts=3, spans=spans)
    failures: list[int] = []

    async def fail_twice(event: Ping) -> None:
        if event.n == 1 and len(failures) < 2:
            failures.append(event.n)
            raise RuntimeError("not yet")

    seen = Recorder(fail_twice)
    harness.subscribe(t, channel, consumer, seen)
    await harness.start(t)
    await harness.publish(t, channel, [(ping(1), "k"), (ping(2), "other")])

    await eventually(lambda: 1 in seen.handled_ns(), "the message succeeds on its third delivery")
    times = [at for at, e in seen.received if e.n == 1]
    assert len(times) == 3, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.28 for gap in gaps), f"redelivered sooner than retry_delay_ms=300: {gaps}"
    labels = {"broker": t.label, "destination": channel, "consumer": consumer}
    await eventually(lambda: sample(registry, "retry_attempts_total", **labels) == 2, "retry_attempts_total counts 2")
    [other_at] = [at for at, e in seen.received if e.n == 2]
    assert other_at < times[1], "another key's message waited for the retry (a retry must not block others)"


async def test_retry_delays_grow_by_the_backoff_multiplier(harness: Harness) -> None:
    channel, consumer = harness.channel(), harness.consumer()
    t, _ = harness.transport(retry_delay_ms=200, max_attempts=3, multiplier=2.0)

    async def fail_twice(_: Ping) -> None:
        if len(seen.received) <= 2:
            raise RuntimeError("not yet")

    seen = Recorder(fail_twice)
    harness.subscribe(t, channel, consumer, seen)
    await harness.start(t)
    await harness.publish(t, channel, [(ping(1), "k")])

    await eventually(lambda: seen.handled_ns() == [1], "the message succeeds on its third delivery")
    times = [at for at, _ in seen.received]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 2, times
    assert gaps[0] >= 0.18, f"second delivery sooner than 200 ms: {gaps}"
    assert gaps[1] >= 0.38, f"third delivery sooner than 200 ms × 2: {gaps}"


async def test_a_scheduled_retry_outlives_its_consumers_stop(harness: Harness) -> None:
    """A retry is arranged durably before the failed message is settled: the consumer stops
    (gracefully) while it waits, and the next consumer of the name gets the delivery."""
    channel, consumer = harness.channel(), harness.consumer()
    first, registry = harness.transport(retry_delay_ms=500, max_attempts=3)

    async def always_fail(_: Ping) -> None:
        raise RuntimeError("not here")

    harness.subscribe(first, channel, consumer, Recorder(always_fail))
    await harness.start(first)
    await harness.publish(first, channel, [(ping(1), "k")])
    labels = {"broker": first.label, "destination": channel, "consumer": consumer}
    await eventually(lambda: sample(registry, "retry_attempts_total", **labels) == 1, "a retry is scheduled")
    await harness.stop(first)

    second, _ = harness.transport(retry_delay_ms=500, max_attempts=3)
    later = Recorder()
    harness.subscribe(second, channel, consumer, later)
    await harness.start(second)
    await eventually(lambda: later.handled_ns() == [1], "the retried delivery reaches the next consumer")


@pytest.mark.parametrize("spans", [False, True], ids=["", "spans"])
async def test_an_exhausted_message_lands_on_the_dlt_with_the_envelope(harness: Harness, spans: bool) -> None:
    channel, consumer = harness.channel(), harness.consumer()
    t, registry = harness.transport(retry_delay_ms=50, max_attempts=2, spans=spans)

    async def always_fail(event: Ping) -> None:
        raise ValueError(f"boom {event.n}\nsecond line")

    seen = Recorder(always_fail)
    harness.subscribe(t, channel, consumer, seen)
    await harness.start(t)
    body = ping(7)
    await harness.publish(t, channel, [(body, "k")])

    [letter] = await eventually(lambda: t.list_dead_letters(channel, 10), "a dead letter on <channel>.DLT")
    assert letter.body == body
    headers = letter.headers
    assert set(ENVELOPE) <= set(headers), headers
    assert headers["x-original-destination"] == channel
    assert headers["x-consumer"] == consumer
    assert headers["x-exception-type"] == "builtins.ValueError"
    assert headers["x-exception-message"] == "boom 7 second line"
    assert headers["x-attempts"] == "2"
    assert headers["app-header"] == "kept", "the message's own headers were not kept"
    datetime.fromisoformat(headers["x-failed-at"].replace("Z", "+00:00"))
    assert len(seen.received) == 2
    labels = {"broker": t.label, "destination": channel, "consumer": consumer}
    await eventually(
        lambda: sample(registry, "dead_letter_topic_messages_total", **labels, reason="exhausted") == 1,
        "dead_letter_topic_messages_total{reason=exhausted} counts it",
    )


async def test_poison_is_dead_lettered_at_once_and_later_messages_go_on(harness: Harness) -> None:
    channel, consumer = harness.channel(), harness.consumer()
    t, registry = harness.transport(retry_delay_ms=50, max_attempts=3)
    seen = Recorder()
    harness.subscribe(t, channel, consumer, seen)
    await harness.start(t)
    not_json, not_the_model = b"{not json", json.dumps({"x": 1}).encode()
    await harness.publish(t, channel, [(not_json, "k"), (not_the_model, "k"), (ping(3), "k")])

    await eventually(lambda: 3 in seen.handled_ns(), "the message after the poison is handled")
    letters = await eventually(
        lambda: _at_least(t.list_dead_letters(channel, 10), 2), "both poison messages dead-lettered"
    )
    assert sorted(letter.body for letter in letters) == sorted([not_json, not_the_model])
    assert all(letter.headers["x-attempts"] == "1" for letter in letters)
    assert seen.received_ns() == [3], "the handler was called with poison"
    labels = {"broker": t.label, "destination": channel, "consumer": consumer}
    await eventually(
        lambda: sample(registry, "dead_letter_topic_messages_total", **labels, reason="poison") == 2,
        "dead_letter_topic_messages_total{reason=poison} counts both",
    )
    assert sample(registry, "retry_attempts_total", **labels) == 0


async def test_dead_letter_listeners_hear_each_dead_letter_once_and_leave_it(harness: Harness) -> None:
    channel, consumer = harness.channel(), harness.consumer()
    t, _ = harness.transport(retry_delay_ms=50, max_attempts=1)

    async def always_fail(_: Ping) -> None:
        raise RuntimeError("down")

    heard: list[DeadLetter] = []

    async def listener(letter: DeadLetter) -> None:
        heard.append(letter)

    harness.subscribe(t, channel, consumer, Recorder(always_fail))
    t.listen_dead_letters(channel, harness.consumer("audit"), listener)
    await harness.start(t)
    await harness.publish(t, channel, [(ping(1), "k"), (ping(2), "k")])

    await eventually(lambda: len(heard) >= 2, "the listener hears both dead letters")
    assert sorted(json.loads(letter.body)["n"] for letter in heard) == [1, 2]
    assert all(letter.headers.get("x-consumer") == consumer for letter in heard), [h.headers for h in heard]
    letters = await eventually(lambda: _at_least(t.list_dead_letters(channel, 10), 2), "both stay on the DLT")
    assert len(letters) == 2
    await harness.publish(t, channel, [(ping(3), "k")])
    await eventually(lambda: len(heard) >= 3, "the listener hears the next one")
    assert sorted(json.loads(letter.body)["n"] for letter in heard) == [1, 2, 3], "a dead letter was heard twice"


async def test_replay_sends_each_dead_letter_back_once(harness: Harness) -> None:
    channel, consumer = harness.channel(), harness.consumer()
    t, _ = harness.transport(retry_delay_ms=50, max_attempts=1)
    failing = {1, 2}

    async def fail_listed(event: Ping) -> None:
        if event.n in failing:
            raise RuntimeError("down")

    seen = Recorder(fail_listed)
    harness.subscribe(t, channel, consumer, seen)
    await harness.start(t)
    await harness.publish(t, channel, [(ping(1), "k"), (ping(2), "k"), (ping(3), "k")])
    await eventually(lambda: _at_least(t.list_dead_letters(channel, 10), 2), "two dead letters")
    assert seen.handled_ns() == [3]

    failing.clear()
    replayed = await t.replay_dead_letters(channel, 10)
    assert sorted(json.loads(letter.body)["n"] for letter in replayed) == [1, 2]
    await eventually(lambda: sorted(seen.handled_ns()) == [1, 2, 3], "the replayed messages reach the handler")
    assert await t.replay_dead_letters(channel, 10) == [], "a second replay replays again"
    assert sorted(seen.handled_ns()) == [1, 2, 3]


async def _at_least(letters: object, n: int) -> list | None:
    found = await letters  # type: ignore[misc]
    return found if len(found) >= n else None


async def test_concurrent_replays_send_each_dead_letter_back_once(harness: Harness) -> None:
    """Replays at once (operators, processes) share the dead letters, never two taking one."""
    channel, consumer = harness.channel(), harness.consumer()
    t, _ = harness.transport(retry_delay_ms=50, max_attempts=1)
    failing = {True}

    async def fail_until_replayed(_: Ping) -> None:
        if failing:
            raise RuntimeError("down")

    seen = Recorder(fail_until_replayed)
    harness.subscribe(t, channel, consumer, seen)
    await harness.start(t)
    await harness.publish(t, channel, [(ping(n), "k") for n in range(40)])
    await eventually(lambda: _at_least(t.list_dead_letters(channel, 100), 40), "forty dead letters")

    failing.clear()
    others = [harness.transport()[0] for _ in range(2)]
    for other in others:
        await harness.start(other)
    results = await asyncio.gather(*(_replay_after(i * 0.003, r, channel) for i, r in enumerate([t, *others])))
    replayed = sorted(json.loads(letter.body)["n"] for letters in results for letter in letters)
    assert replayed == list(range(40)), f"replayed {[len(r) for r in results]} letters: {replayed}"
    await eventually(lambda: sorted(seen.handled_ns()) == list(range(40)), "each replayed message is handled")


async def _replay_after(offset_s: float, t: Transport, channel: str) -> list[DeadLetter]:
    """A replay started `offset_s` later than the first: the replays overlap at different stages."""
    await asyncio.sleep(offset_s)
    return await t.replay_dead_letters(channel, 100)
