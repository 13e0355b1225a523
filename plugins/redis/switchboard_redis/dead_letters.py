"""`<channel>.DLT` streams: listeners (a consumer group per listening consumer name), listing
(XRANGE) and replay (the consumer group `switchboard-dlt-replay`: each dead letter is read by it,
re-published and acknowledged once)."""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from brokers.model import DeadLetter, Outgoing, dead_letter_channel, replay_headers
from switchboard_redis.connection import REPLAY_GROUP, Entry, RedisConnection, range_entries, stream_entries, text
from switchboard_redis.reader import BACKOFF_MAX_S, BLOCK_MS

if TYPE_CHECKING:
    from brokers.interface import DeadLetterHandler, Engine

log = logging.getLogger("switchboard.redis")
LISTEN_BATCH = 64
REPLAY_ABANDONED_MS = 60_000
"""A replay's unacknowledged reads idle this long belong to a replay that died: the next one takes them."""


def as_dead_letter(entry: Entry) -> DeadLetter:
    return DeadLetter(entry.stream, entry.body, dict(entry.headers), position=entry.id, key=entry.key)


class RedisDeadLetters:
    """`brokers.interface.DeadLetters` on Redis Streams."""

    def __init__(self, connection: RedisConnection, engine: Engine, member: str) -> None:
        self._connection = connection
        self._engine = engine
        self._member = member
        self.listeners: list[tuple[str, str, DeadLetterHandler]] = []
        self.on_listen: Callable[[str, str], None] | None = None
        """Called with (channel, consumer) by `listen` (the AsyncAPI documentation)."""
        self._tasks: list[asyncio.Task[None]] = []

    def listen(self, channel: str, consumer: str, handler: DeadLetterHandler) -> None:
        self.listeners.append((dead_letter_channel(channel), consumer, handler))
        if self.on_listen is not None:
            self.on_listen(channel, consumer)

    async def start(self, stopping: asyncio.Event) -> None:
        if self._tasks:
            return
        for dlt, consumer, handler in self.listeners:
            await self._connection.ensure_group(dlt, consumer)
            self._tasks.append(
                asyncio.create_task(self._listen(dlt, consumer, handler, stopping), name=f"redis-dlt-{dlt}")
            )

    async def stopped(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks.clear()

    async def _listen(self, dlt: str, group: str, handler: DeadLetterHandler, stopping: asyncio.Event) -> None:
        """Each dead letter once per group: handled, then acknowledged (a handler error is logged).
        Pending entries of this member (none after a restart: a new member) come first."""
        client, backoff = self._connection.client, 0.1
        while not stopping.is_set():
            try:
                reply = await client.xreadgroup(group, self._member, {dlt: ">"}, count=LISTEN_BATCH, block=BLOCK_MS)
                for entry in stream_entries(reply):
                    try:
                        await handler(as_dead_letter(entry))
                    except Exception:
                        log.exception("dead-letter listener failed on a message of %s", dlt)
                    await client.xack(dlt, group, entry.id)
                backoff = 0.1
            except Exception as exc:  # noqa: BLE001 - the broker may be away for a while
                if "NOGROUP" in str(exc):
                    await self._connection.ensure_group(dlt, group)
                log.warning("reading %s for %s failed: %s", dlt, group, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def list(self, channel: str, limit: int) -> builtins.list[DeadLetter]:
        dlt = dead_letter_channel(channel)
        items = await self._connection.client.xrange(dlt, "-", "+", count=limit)
        return [as_dead_letter(e) for e in range_entries(dlt, items)]

    async def replay(self, channel: str, limit: int) -> builtins.list[DeadLetter]:
        """Up to `limit` dead letters the replay group has not replayed: those an interrupted replay
        read but did not acknowledge (idle past REPLAY_ABANDONED_MS) first, then new ones. Each run
        reads as a consumer of its own, so concurrent replays never send one letter twice."""
        dlt = dead_letter_channel(channel)
        client = self._connection.client
        await self._connection.ensure_group(dlt, REPLAY_GROUP)
        reader = f"{self._member}-replay-{uuid.uuid4().hex[:8]}"
        reply = await client.xautoclaim(dlt, REPLAY_GROUP, reader, REPLAY_ABANDONED_MS, "0-0", count=limit)
        entries = range_entries(dlt, [(i, f) for i, f in reply[1] if f is not None])
        if len(entries) < limit:
            fresh = await client.xreadgroup(REPLAY_GROUP, reader, {dlt: ">"}, count=limit - len(entries))
            entries.extend(stream_entries(fresh))
        letters = await self._send_back(dlt, entries)
        # only once nothing is pending: deleting a consumer drops its unacknowledged reads
        await client.xgroup_delconsumer(dlt, REPLAY_GROUP, reader)
        return letters

    async def _send_back(self, dlt: str, entries: builtins.list[Entry]) -> builtins.list[DeadLetter]:
        client = self._connection.client
        letters = [as_dead_letter(e) for e in entries]
        for letter, entry in zip(letters, entries, strict=True):
            original = letter.original_destination
            key = text(entry.key) if entry.key else ""
            await self._engine.publish_one(Outgoing(original, letter.body, key, replay_headers(letter)))
            await client.xack(dlt, REPLAY_GROUP, entry.id)
        return letters
