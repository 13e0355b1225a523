"""Group commit for a subscription's deliveries and in-order settlement of its batches."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from brokers.model import BATCH_LINGER_S, BATCH_MAX, LINGER_BELOW, MAX_UNSETTLED_BATCHES, Delivery

T = TypeVar("T")
log = logging.getLogger("switchboard.delivery")


class Batcher:
    """Group commit for one subscription: deliveries submitted while a batch runs form the
    next batch (up to BATCH_MAX); each submitter returns when its deliveries were run."""

    def __init__(self, run: Callable[[list[Delivery]], Awaitable[None]]) -> None:
        self._run = run
        self._waiting: list[tuple[list[Delivery], asyncio.Future[None]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, deliveries: list[Delivery]) -> None:
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((deliveries, done))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        await done

    async def idle(self) -> None:
        """Return once no batch runs (new submissions may start another)."""
        if self._worker is not None and not self._worker.done():
            await asyncio.wait([self._worker])

    def _next_batch(self) -> list[tuple[list[Delivery], asyncio.Future[None]]]:
        taken: list[tuple[list[Delivery], asyncio.Future[None]]] = []
        size = 0
        while self._waiting and (not taken or size + len(self._waiting[0][0]) <= BATCH_MAX):
            item = self._waiting.pop(0)
            taken.append(item)
            size += len(item[0])
        return taken

    async def _drain(self) -> None:
        # submissions made meanwhile join this batch; a small one waits BATCH_LINGER_S for company
        waiting = sum(len(deliveries) for deliveries, _ in self._waiting)
        await asyncio.sleep(BATCH_LINGER_S if waiting < LINGER_BELOW else 0)
        while self._waiting:
            taken = self._next_batch()
            try:
                await self._run([d for deliveries, _ in taken for d in deliveries])
            except BaseException as exc:
                for _, done in taken:
                    if not done.done():
                        done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, done in taken:
                    if not done.done():
                        done.set_result(None)


class SettleQueue:
    """Finishes one subscription's batches in the background while the next batch is handled:
    first the hand-off of a batch's failed messages to retry/DLT (broker round trips), which
    starts at once, alongside earlier batches' hand-offs; then the batch's acknowledgement,
    strictly in batch order: Kafka commits offsets, and a later batch's commit must not pass
    an earlier batch's record that is still being handed on (a hand-off waiting for the previous
    settlement would cost the consumer a round trip per failing batch). At most
    MAX_UNSETTLED_BATCHES wait; beyond that the consumer waits for the oldest."""

    def __init__(self) -> None:
        self._tasks: collections.deque[asyncio.Task[None]] = collections.deque()

    async def add(self, hand_off: Callable[[], Awaitable[T]], settle: Callable[[T], Awaitable[None]]) -> None:
        previous = self._tasks[-1] if self._tasks else None
        self._tasks.append(asyncio.create_task(self._after(previous, hand_off, settle)))
        while self._tasks and self._tasks[0].done():
            self._tasks.popleft()
        while len(self._tasks) > MAX_UNSETTLED_BATCHES:
            await self._tasks.popleft()

    async def idle(self) -> None:
        """Return once every batch added so far is settled."""
        if self._tasks:
            await asyncio.wait([self._tasks[-1]])

    @staticmethod
    async def _after(
        previous: asyncio.Task[None] | None,
        hand_off: Callable[[], Awaitable[T]],
        settle: Callable[[T], Awaitable[None]],
    ) -> None:
        try:
            handed = await hand_off()
            if previous is not None:
                await asyncio.wait([previous])
            await settle(handed)
        except Exception:  # unsettled messages come again (redelivery); handlers are idempotent
            log.exception("settling a batch failed; its messages will be redelivered")
