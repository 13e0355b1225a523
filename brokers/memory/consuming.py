"""Reading subscriptions and carrying out the engine's decisions (`brokers.interface.Consumer`)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from brokers.memory.server import Group, Record, RetryItem, Server
from brokers.model import ATTEMPTS_HEADER, BATCH_MAX, Delivery, attempt_header

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from brokers.interface import Pipeline
    from brokers.model import Subscription

log = logging.getLogger("switchboard.delivery")
IDLE_WAIT_S = 1.0
"""Longest a reader waits without a signal before it looks again (retries falling due wake it sooner)."""


class Reader:
    """One subscription's reading task: claims batches from its group and submits them to the
    pipeline. `alive` is False once it stopped; its claims then count as released."""

    def __init__(self, sub: Subscription, group: Group, pipeline: Pipeline) -> None:
        self.sub = sub
        self.group = group
        self.pipeline = pipeline
        self.alive = False
        self.stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.alive, self.stopping = True, False
        self._task = asyncio.create_task(self._run(), name=f"memory-reader {self.sub.channel}/{self.sub.consumer}")

    async def _run(self) -> None:
        group = self.group
        while not self.stopping:
            items = group.claim(self, BATCH_MAX)
            if not items:
                due = group.next_due()
                wait = IDLE_WAIT_S if due is None else min(IDLE_WAIT_S, due - time.monotonic())
                await group.log.changed.wait(wait)
                continue
            if self.pipeline.draining:
                for item in items:
                    group.release(item)
                break
            try:
                await self.pipeline.submit([_delivery(self, item) for item in items])
            except Exception:  # the batch comes again (what was settled meanwhile stays settled)
                log.exception("a batch of %s for %s failed; redelivering it", self.sub.channel, self.sub.consumer)
                for item in items:
                    if group.holds(self, item):
                        group.release(item)

    async def stop_reading(self) -> None:
        """Graceful: stop claiming; a batch being submitted finishes (its settlement follows)."""
        self.stopping = True
        self.group.log.changed.fire()
        if self._task is not None:
            await asyncio.wait([self._task])
            if not self._task.cancelled() and self._task.exception() is not None:
                log.error("reader of %s failed", self.sub.channel, exc_info=self._task.exception())

    def abandon(self) -> None:
        """Abrupt: stop at once; everything claimed and not settled is read again (by another reader)."""
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
        self.release()

    def release(self) -> None:
        """Give back whatever is still claimed and end the reader's claims for good."""
        self.alive = False
        self.group.release_all(self)


def _delivery(reader: Reader, item: Record | RetryItem) -> Delivery:
    return Delivery(item.body, item.headers, attempt_header(item.headers), (reader, item))


class MemoryConsumer:
    """`brokers.interface.Consumer`: one `Reader` per subscription, started by `Lifecycle.start`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.readers: list[Reader] = []

    def subscribe(self, sub: Subscription, pipeline: Pipeline) -> None:
        self.readers.append(Reader(sub, self.server.group(sub.channel, sub.consumer), pipeline))

    def start(self) -> None:
        for reader in self.readers:
            reader.start()

    async def schedule_retry(self, sub: Subscription, delivery: Delivery, attempt: int, delay_ms: int) -> None:
        _, item = delivery.native
        headers = {**item.headers, ATTEMPTS_HEADER: str(attempt)}
        due = time.monotonic() + delay_ms / 1000
        self.server.group(sub.channel, sub.consumer).add_retry(RetryItem(due, item.key, item.body, headers))

    async def dead_letter(self, sub: Subscription, delivery: Delivery, headers: dict[str, str]) -> None:
        _, item = delivery.native
        self.server.log(sub.dead_letter_channel).append(item.key, item.body, {**item.headers, **headers})

    async def settle(self, sub: Subscription, done: list[Delivery], redeliver: list[Delivery]) -> None:  # noqa: ARG002
        """Acknowledge `done` up to the first record to redeliver; that record and every later one
        of the log (in this call) are given back. A reader's claims that lapsed (it was abandoned)
        are not touched: those messages are someone else's now."""
        first_back = min((d.native[1].offset for d in redeliver if isinstance(d.native[1], Record)), default=None)
        for delivery in [*done, *redeliver]:
            reader, item = delivery.native
            if not reader.group.holds(reader, item):
                continue
            later = isinstance(item, Record) and first_back is not None and item.offset >= first_back
            if delivery in redeliver or later:
                reader.group.release(item)
            else:
                reader.group.ack(item)

    async def drain(self, settled: Callable[[], Awaitable[None]]) -> None:
        await asyncio.gather(*(reader.stop_reading() for reader in self.readers))
        await settled()
        for reader in self.readers:
            reader.release()

    def abandon(self) -> None:
        """The connection is gone without a drain: nothing unsettled stays claimed."""
        for reader in self.readers:
            reader.abandon()
