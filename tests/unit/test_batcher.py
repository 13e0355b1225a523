"""A subscription's batcher: at moderate rates a small batch waits briefly for company;
under load batches start full and run at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from brokers.engine import batching
from brokers.engine.batching import Batcher as _Batcher
from brokers.model import LINGER_BELOW


def _recording_batcher() -> tuple[_Batcher, list[int]]:
    sizes: list[int] = []

    async def run(batch: list[Any]) -> None:
        sizes.append(len(batch))

    return _Batcher(run), sizes


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_lone_message_waits_for_the_next_one_to_join_its_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "BATCH_LINGER_S", 0.5)
    batcher, sizes = _recording_batcher()

    first = asyncio.create_task(batcher.submit(["m1"]))
    await _turns()  # a few loop turns later, as the next message of a moderate stream
    second = asyncio.create_task(batcher.submit(["m2"]))
    async with asyncio.timeout(5):
        await asyncio.gather(first, second)

    assert sizes == [2]


async def test_a_batch_that_starts_full_enough_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "BATCH_LINGER_S", 60.0)
    batcher, sizes = _recording_batcher()

    async with asyncio.timeout(5):
        await batcher.submit([f"m{i}" for i in range(LINGER_BELOW)])

    assert sizes == [LINGER_BELOW]
