"""`<channel>.DLT` on the memory server: listeners, listing and replay (`brokers.interface.DeadLetters`)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from brokers.memory.server import Group, Record, Server
from brokers.model import DeadLetter, dead_letter_channel, replay_headers

if TYPE_CHECKING:
    from brokers.interface import DeadLetterHandler

log = logging.getLogger("switchboard.delivery")
IDLE_WAIT_S = 1.0


def dead_letter_of(record: Record, channel: str) -> DeadLetter:
    return DeadLetter(channel, record.body, dict(record.headers), str(record.offset), key=record.key.encode() or None)


class Listener:
    """Hands each message of one DLT to `handler` once per consumer name (a group on the DLT)."""

    def __init__(self, channel: str, group: Group, handler: DeadLetterHandler) -> None:
        self.channel = channel
        self.group = group
        self.handler = handler
        self.alive = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.alive = True
        self._task = asyncio.create_task(self._run(), name=f"memory-dlt-listener {self.channel}")

    async def _run(self) -> None:
        while True:
            records = [r for r in self.group.claim(self, 64) if isinstance(r, Record)]
            if not records:
                await self.group.log.changed.wait(IDLE_WAIT_S)
                continue
            for record in records:
                try:
                    await self.handler(dead_letter_of(record, self.channel))
                except Exception:
                    log.exception("dead-letter listener failed on a message of %s", self.channel)
                self.group.ack(record)

    def stop(self) -> None:
        """Stop listening; a message whose handler did not finish is heard again next time."""
        if self._task is not None:
            self._task.cancel()
        self.alive = False
        self.group.release_all(self)


class MemoryDeadLetters:
    """Listing reads the DLT log; replay keeps one cursor per DLT on the server, so each dead
    letter is replayed once however often (and by whichever transport) replay runs."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.listeners: list[Listener] = []

    def listen(self, channel: str, consumer: str, handler: DeadLetterHandler) -> None:
        dlt = dead_letter_channel(channel)
        self.listeners.append(Listener(dlt, self.server.group(dlt, consumer), handler))

    def start(self) -> None:
        for listener in self.listeners:
            listener.start()

    def stop(self) -> None:
        for listener in self.listeners:
            listener.stop()

    async def replay(self, channel: str, limit: int) -> list[DeadLetter]:
        dlt = dead_letter_channel(channel)
        start = self.server.replayed.get(dlt, 0)
        records = self.server.log(dlt).records[start : start + limit]
        self.server.replayed[dlt] = start + len(records)  # before any await: no replay takes them twice
        letters = [dead_letter_of(r, dlt) for r in records]
        for letter, record in zip(letters, records, strict=True):
            self.server.log(letter.original_destination).append(record.key, letter.body, replay_headers(letter))
        return letters

    async def list(self, channel: str, limit: int) -> list[DeadLetter]:
        dlt = dead_letter_channel(channel)
        return [dead_letter_of(r, dlt) for r in self.server.log(dlt).records[:limit]]
