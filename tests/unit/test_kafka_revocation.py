"""A Kafka revocation finishes the batches in flight and commits what they settled before the
partitions go, so their next owner does not handle those records again."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka import TopicPartition

from brokers.kafka import commits
from brokers.kafka.commits import CommitGate, Committer

TP = TopicPartition("order-events", 0)


class RecordingConsumer:
    """Stands in for AIOKafkaConsumer: records the offsets committed."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_revocation_waits_for_the_batch_in_flight_and_commits_its_offsets() -> None:
    batch_done = asyncio.Event()
    gate = CommitGate(batch_done.wait)
    consumer = RecordingConsumer()
    committer = Committer(consumer, gate)  # type: ignore[arg-type]

    revocation = asyncio.create_task(gate.on_partitions_revoked({TP}))
    await _turns()
    assert not revocation.done()
    assert gate.open

    committer.mark(TP, 1024)  # the batch in flight settles: offsets up to 1024 handled
    batch_done.set()
    async with asyncio.timeout(5):
        await revocation

    assert {TP: 1024} in consumer.commits
    assert not gate.open  # offsets settled from now on wait for the new assignment


async def test_a_batch_that_does_not_finish_in_time_leaves_its_records_to_the_next_owner(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(commits, "REVOKE_SETTLE_S", 0.05)
    never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    gate = CommitGate(lambda: never)
    consumer = RecordingConsumer()
    committer = Committer(consumer, gate)  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="switchboard.kafka"):
        async with asyncio.timeout(5):
            await gate.on_partitions_revoked({TP})
    committer.mark(TP, 1024)  # settles after the revocation
    await _turns()

    assert consumer.commits == []
    assert "their records come again" in caplog.text


async def test_a_join_that_revokes_nothing_does_not_wait_for_batches() -> None:
    never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    gate = CommitGate(lambda: never)

    async with asyncio.timeout(1):
        await gate.on_partitions_revoked(set())
    assert not gate.open
