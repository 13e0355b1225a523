"""One subscription's read loop: XREADGROUP of the channel and of the consumer's retry stream,
crash recovery by XAUTOCLAIM, batches handed to the engine's pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from brokers.model import BATCH_MAX, Delivery, attempt_header
from switchboard_redis.connection import (
    VISIBILITY_TIMEOUT_MS,
    Entry,
    Keys,
    RedisConnection,
    decode_entry,
    stream_entries,
    text,
)

if TYPE_CHECKING:
    from brokers.interface import Pipeline
    from switchboard_redis.received import ReceivedMetrics

log = logging.getLogger("switchboard.redis")

BLOCK_MS = 500
"""Longest wait of one XREADGROUP (a drain waits at most this long for the loop to notice)."""
SWEEP_EVERY_S = 5.0
"""How often entries idle longer than VISIBILITY_TIMEOUT_MS are claimed from crashed consumers."""
BACKOFF_MAX_S = 5.0
CRASH_LOOP_DELIVERY_LIMIT = 10
"""Deliveries (Redis's count: each read or claim) after which an entry never settled is dead-lettered
when claimed again, its handler not called (as RabbitMQ's `x-delivery-limit`)."""


def redelivered_idle_ms() -> int:
    """The idle time an entry given back gets (XCLAIM IDLE): at once claimable by any sweep."""
    return VISIBILITY_TIMEOUT_MS * 10


class StreamReader:
    """Reads `keys.stream` and `keys.retry_stream` as member `member` of group `keys.consumer`."""

    def __init__(
        self, connection: RedisConnection, keys: Keys, member: str, pipeline: Pipeline, received: ReceivedMetrics
    ) -> None:
        self.connection = connection
        self.received = received
        self.keys = keys
        self.member = member
        self.pipeline = pipeline
        self.in_flight: set[tuple[str, str]] = set()
        """(stream, id) of the entries handed to the pipeline and not settled yet."""
        self.sweep_now = asyncio.Event()
        self.sweep_now.set()  # the first round claims what a stopped or crashed process left
        self.healthy = True
        self.crash_loop: Callable[[Entry, int], Awaitable[None]] | None = None
        """Dead-letters an entry claimed after more than CRASH_LOOP_DELIVERY_LIMIT deliveries."""

    async def run(self, stopping: asyncio.Event) -> None:
        backoff = 0.1
        last_sweep = float("-inf")
        while not stopping.is_set():
            try:
                if self.sweep_now.is_set() or time.monotonic() - last_sweep > SWEEP_EVERY_S:
                    self.sweep_now.clear()
                    last_sweep = time.monotonic()
                    await self._hand_over(await self._claim_idle(), stopping)
                await self._hand_over(await self._read_new(), stopping)
                self.healthy, backoff = True, 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker may be away for a while
                self.healthy = False
                log.warning("reading %s for %s failed: %s", self.keys.channel, self.keys.consumer, exc)
                if "NOGROUP" in str(exc):  # the stream or group was deleted meanwhile: recreate them
                    with contextlib.suppress(Exception):
                        await self.connection.ensure_group(self.keys.stream, self.keys.consumer)
                        await self.connection.ensure_group(self.keys.retry_stream, self.keys.consumer)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _read_new(self) -> list[Entry]:
        keys = self.keys
        replies = await self.connection.client.xreadgroup(
            keys.consumer, self.member, {keys.stream: ">", keys.retry_stream: ">"}, count=BATCH_MAX, block=BLOCK_MS
        )
        return stream_entries(replies)

    async def _claim_idle(self) -> list[Entry]:
        """Entries of crashed (or draining) consumers idle past the visibility timeout, and entries
        given back: XAUTOCLAIM them for this member."""
        claimed: list[Entry] = []
        for stream in (self.keys.stream, self.keys.retry_stream):
            cursor = "0-0"
            while True:
                reply = await self.connection.client.xautoclaim(
                    stream, self.keys.consumer, self.member, VISIBILITY_TIMEOUT_MS, cursor, count=BATCH_MAX
                )
                cursor, items = text(reply[0]), reply[1]
                claimed.extend(
                    decode_entry(stream, i, f)
                    for i, f in items
                    if f is not None and (stream, text(i)) not in self.in_flight
                )
                if cursor == "0-0" or len(claimed) >= BATCH_MAX:
                    break
        return await self._within_delivery_limit(claimed)

    async def _within_delivery_limit(self, claimed: list[Entry]) -> list[Entry]:
        """`claimed` less the entries delivered more than CRASH_LOOP_DELIVERY_LIMIT times (a message
        that kills its consumer every time never reaches the failure policy): those are handed to
        `crash_loop`, which dead-letters them."""
        if not claimed:
            return []
        pipe = self.connection.client.pipeline(transaction=False)
        for e in claimed:
            pipe.xpending_range(e.stream, self.keys.consumer, e.id, e.id, 1, consumername=self.member)
        kept: list[Entry] = []
        for entry, pending in zip(claimed, await pipe.execute(), strict=True):
            deliveries = int(pending[0]["times_delivered"]) if pending else 0
            if deliveries > CRASH_LOOP_DELIVERY_LIMIT and self.crash_loop is not None:
                await self.crash_loop(entry, deliveries)
            else:
                kept.append(entry)
        return kept

    async def _hand_over(self, entries: list[Entry], stopping: asyncio.Event) -> None:
        if not entries:
            return
        if stopping.is_set() or self.pipeline.draining:
            await self.give_back(entries)
            return
        for e in entries:
            self.in_flight.add((e.stream, e.id))
        batch = [Delivery(e.body, e.headers, attempt_header(e.headers), e) for e in entries]
        await self.received.around(self.keys.channel, batch, lambda: self.pipeline.submit(batch))

    async def give_back(self, entries: list[Entry]) -> None:
        """Leave `entries` pending but idle enough for the next sweep (of any member) to claim them."""
        per_stream: dict[str, list[str]] = {}
        for e in entries:
            self.in_flight.discard((e.stream, e.id))
            per_stream.setdefault(e.stream, []).append(e.id)
        for stream, ids in per_stream.items():
            await self.connection.client.xclaim(
                stream, self.keys.consumer, self.member, 0, list[Any](ids), idle=redelivered_idle_ms(), justid=True
            )
        self.sweep_now.set()

    def settled(self, entry: Entry) -> None:
        self.in_flight.discard((entry.stream, entry.id))
