"""A subscription's settle queue: hand-offs overlap, acknowledgements keep batch order."""

from __future__ import annotations

import asyncio

from brokers.engine.batching import SettleQueue as _SettleQueue


async def test_a_batch_hands_off_while_an_earlier_hand_off_waits_but_settles_after_it() -> None:
    queue = _SettleQueue()
    first_handed_on = asyncio.Event()
    second_hand_off_started = asyncio.Event()
    settled: list[int] = []

    async def slow_hand_off() -> int:  # e.g. retry copies waiting for the broker's confirm
        await first_handed_on.wait()
        return 1

    async def quick_hand_off() -> int:
        second_hand_off_started.set()
        return 2

    async def settle(batch: int) -> None:
        settled.append(batch)

    await queue.add(slow_hand_off, settle)
    await queue.add(quick_hand_off, settle)
    async with asyncio.timeout(5):
        await second_hand_off_started.wait()  # did not wait for the first batch's hand-off
    assert settled == [], "the second batch settled while the first was still being handed on"

    first_handed_on.set()
    async with asyncio.timeout(5):
        await queue.idle()
    assert settled == [1, 2]


async def test_a_failing_settlement_does_not_hold_up_later_batches() -> None:
    queue = _SettleQueue()
    settled: list[int] = []

    async def hand_off(batch: int) -> int:
        return batch

    async def settle(batch: int) -> None:
        if batch == 1:
            raise ConnectionError("acknowledgement failed")
        settled.append(batch)

    await queue.add(lambda: hand_off(1), settle)
    await queue.add(lambda: hand_off(2), settle)
    async with asyncio.timeout(5):
        await queue.idle()
    assert settled == [2]
