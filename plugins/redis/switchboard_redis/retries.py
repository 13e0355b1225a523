"""Retries: a sorted set per channel and consumer scored by due time, moved into the consumer's
retry stream by a Lua script (`move_due.lua`) when due.

Scheduling is one MULTI/EXEC: the retry copy (a hash with the entry's fields, `x-attempts`
set), its due time in the sorted set, and the XACK of the delivered entry: a crash leaves
either the delivered entry pending (claimed again) or the retry scheduled, never neither.
The script moves each due retry (XADD to the retry stream, DEL, ZREM) atomically too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from importlib.resources import files
from typing import TYPE_CHECKING

from brokers.model import ATTEMPTS_HEADER, BATCH_MAX
from switchboard_redis.connection import Entry, Keys, RedisConnection, entry_fields

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

log = logging.getLogger("switchboard.redis")

MOVE_EVERY_S = 0.05
"""How often each subscription's due retries are looked for (one EVAL; a delay is at most this late)."""
MOVE_SCRIPT = files("switchboard_redis").joinpath("move_due.lua").read_text()


class Retries:
    """Schedules retries and moves the due ones, per subscription."""

    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._script: AsyncScript | None = None

    @property
    def script(self) -> AsyncScript:
        if self._script is None:
            self._script = self._connection.client.register_script(MOVE_SCRIPT)
        return self._script

    async def schedule(self, keys: Keys, entry: Entry, attempt: int, delay_ms: int) -> None:
        """Keep a copy of `entry` with `x-attempts` = `attempt`, due in `delay_ms`, and acknowledge
        `entry` (one transaction)."""
        retry_id = uuid.uuid4().hex
        headers = {**entry.headers, ATTEMPTS_HEADER: str(attempt)}
        key = entry.key.decode(errors="replace") if entry.key else ""
        due_ms = int(time.time() * 1000) + delay_ms
        pipe = self._connection.client.pipeline(transaction=True)
        pipe.hset(keys.retry_message_prefix + retry_id, mapping=entry_fields(entry.body, key, headers))  # type: ignore[arg-type]
        pipe.zadd(keys.retry_due, {retry_id: due_ms})
        pipe.xack(entry.stream, keys.consumer, entry.id)
        await pipe.execute()

    async def move_due(self, keys: Keys) -> int:
        """Move the retries of `keys` that are due into the retry stream; how many were moved."""
        now_ms = int(time.time() * 1000)
        moved = await self.script(
            keys=[keys.retry_due, keys.retry_stream], args=[now_ms, BATCH_MAX, keys.retry_message_prefix]
        )
        return int(moved)

    async def scheduled(self, keys: Keys) -> int:
        return int(await self._connection.client.zcard(keys.retry_due))

    async def run(self, keys: Keys, stopping: asyncio.Event) -> None:
        """Move due retries until `stopping` is set (a failure is logged and tried again)."""
        while not stopping.is_set():
            try:
                moved = await self.move_due(keys)
            except Exception as exc:  # noqa: BLE001 - the broker may be away for a while
                log.warning("moving due retries of %s for %s failed: %s", keys.channel, keys.consumer, exc)
                moved = 0
            if moved < BATCH_MAX:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), MOVE_EVERY_S)
