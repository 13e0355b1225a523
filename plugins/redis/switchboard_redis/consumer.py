"""`brokers.interface.Consumer` on Redis Streams: one consumer group per consumer name, read
by a `StreamReader` per subscription; the engine's decisions carried out natively:
settle = XACK, give back = XCLAIM IDLE (claimed again by the next sweep), retry = `Retries`,
dead letter = XADD to `<channel>.DLT` with the original bytes and the envelope headers."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from brokers.model import REASON_EXHAUSTED, Outgoing, dead_letter_headers
from switchboard_redis.connection import Entry, Keys, RedisConnection
from switchboard_redis.reader import StreamReader
from switchboard_redis.retries import Retries

if TYPE_CHECKING:
    from brokers.interface import Engine, Pipeline
    from brokers.metrics import DeliveryMetrics
    from brokers.model import Delivery, Subscription
    from switchboard_redis.received import ReceivedMetrics

log = logging.getLogger("switchboard.redis")


class DeliveryLimitExceeded(Exception):
    """The reason on a dead letter of a message whose consumers never settled it (crash loop)."""


def member_name() -> str:
    """This process's consumer name inside every group (unique: a restarted process is another)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class RedisConsumer:
    """Reads the subscriptions and settles, retries and dead-letters their messages."""

    def __init__(
        self, connection: RedisConnection, engine: Engine, received: ReceivedMetrics, metrics: DeliveryMetrics
    ) -> None:
        self._connection = connection
        self._received = received
        self._metrics = metrics
        self._engine = engine
        self.retries = Retries(connection)
        self.member = member_name()
        self.readers: dict[tuple[str, str], StreamReader] = {}
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # --- wiring ----------------------------------------------------------------------
    def subscribe(self, sub: Subscription, pipeline: Pipeline) -> None:
        keys = Keys(sub.channel, sub.consumer)
        reader = StreamReader(self._connection, keys, self.member, pipeline, self._received)

        async def crash_loop(entry: Entry, deliveries: int) -> None:
            await self._dead_letter_crash_loop(sub, entry, deliveries)

        reader.crash_loop = crash_loop
        self.readers[(sub.channel, sub.consumer)] = reader

    async def ensure_groups(self) -> None:
        """The consumer groups of every subscription, on the channel and on its retry stream."""
        for reader in self.readers.values():
            await self._connection.ensure_group(reader.keys.stream, reader.keys.consumer)
            await self._connection.ensure_group(reader.keys.retry_stream, reader.keys.consumer)

    async def start(self) -> None:
        """Start every subscription's read loop and retry mover (from `Lifecycle.start`)."""
        if self._tasks:
            return
        await self.ensure_groups()
        for reader in self.readers.values():
            self._tasks.append(asyncio.create_task(reader.run(self.stopping), name=f"redis-read-{reader.keys.channel}"))
            self._tasks.append(
                asyncio.create_task(
                    self.retries.run(reader.keys, self.stopping), name=f"redis-retry-{reader.keys.channel}"
                )
            )

    def consuming(self) -> bool:
        return all(reader.healthy for reader in self.readers.values()) and not any(t.done() for t in self._tasks)

    # --- the engine's moves ----------------------------------------------------------
    def _reader(self, sub: Subscription) -> StreamReader:
        return self.readers[(sub.channel, sub.consumer)]

    async def schedule_retry(self, sub: Subscription, delivery: Delivery, attempt: int, delay_ms: int) -> None:
        entry: Entry = delivery.native
        await self.retries.schedule(self._reader(sub).keys, entry, attempt, delay_ms)
        delivery.settled = True  # acknowledged in the same transaction
        self._reader(sub).settled(entry)

    async def dead_letter(self, sub: Subscription, delivery: Delivery, headers: dict[str, str]) -> None:
        entry: Entry = delivery.native
        key = entry.key.decode(errors="replace") if entry.key else ""
        await self._engine.publish_one(
            Outgoing(sub.dead_letter_channel, delivery.body, key, {**delivery.headers, **headers})
        )

    async def _dead_letter_crash_loop(self, sub: Subscription, entry: Entry, deliveries: int) -> None:
        exc = DeliveryLimitExceeded(f"delivered {deliveries} times without being settled (its consumers crashed?)")
        key = entry.key.decode(errors="replace") if entry.key else ""
        headers = {**entry.headers, **dead_letter_headers(sub, exc, deliveries)}
        await self._engine.publish_one(Outgoing(sub.dead_letter_channel, entry.body, key, headers))
        await self._connection.client.xack(entry.stream, sub.consumer, entry.id)
        self._metrics.dead_lettered(sub.channel, sub.consumer, REASON_EXHAUSTED)
        log.error("dead-lettered %s %s for %s: %s", entry.stream, entry.id, sub.consumer, exc)

    async def settle(self, sub: Subscription, done: list[Delivery], redeliver: list[Delivery]) -> None:
        reader = self._reader(sub)
        acked: dict[str, list[str]] = {}
        for delivery in done:
            entry: Entry = delivery.native
            acked.setdefault(entry.stream, []).append(entry.id)
        if acked:
            pipe = self._connection.client.pipeline(transaction=False)
            for stream, ids in acked.items():
                pipe.xack(stream, sub.consumer, *ids)
            await pipe.execute()
        for delivery in done:
            reader.settled(delivery.native)
        if redeliver:
            await reader.give_back([d.native for d in redeliver])

    async def drain(self, settled: Callable[[], Awaitable[None]]) -> None:
        """Stop the read loops (what they read meanwhile is given back), wait for the engine,
        then drop this member from its groups when it holds nothing pending."""
        self.stopping.set()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await settled()
        for reader in self.readers.values():
            for stream in (reader.keys.stream, reader.keys.retry_stream):
                try:
                    pending = await self._connection.client.xpending_range(
                        stream, reader.keys.consumer, "-", "+", 1, consumername=self.member
                    )
                    if not pending:
                        await self._connection.client.xgroup_delconsumer(stream, reader.keys.consumer, self.member)
                except Exception as exc:  # noqa: BLE001 - bookkeeping only
                    log.debug("could not remove consumer %s from %s: %s", self.member, stream, exc)
        self._tasks.clear()
