"""Transactional outbox: events are written with the state change, published later.

Contract: `Outbox.add(tx, channel, event)` stores the event inside the caller's
transaction, so the state change and its event commit or vanish together. The
relay publishes a batch of stored events at a time with `Transport.publish_batch`
(sends started in insertion order, so one key's events keep their order on Kafka),
marks each sent after the broker confirmed it, and keeps retrying while the broker
is down (so an HTTP request can be accepted during a broker outage). Each event carries the trace context of
the transaction that wrote it. A crash between publish and mark may publish
an event twice; consumers are idempotent by `eventId`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

from brokers.base import EVENT_ID_HEADER, EVENT_TYPE_HEADER, Outgoing
from services.tracing import trace_headers

if TYPE_CHECKING:
    from brokers.base import Transport
    from services.events import Event
    from services.store import Database, Tx

log = logging.getLogger("switchboard.outbox")

BATCH = 200
IDLE_POLL_S = 1.0
BROKER_DOWN_BACKOFF_S = 1.0


class Outbox:
    def __init__(self, db: Database, transport: Transport, table: str, resolve_channel: dict[str, str]) -> None:
        self.db = db
        self.transport = transport
        self.table = table
        self._channels = resolve_channel
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            f" id {self.db.autoincrement_pk}, channel TEXT NOT NULL, msg_key TEXT NOT NULL,"
            " body TEXT NOT NULL, headers TEXT NOT NULL)",
        ]

    def add(self, tx: Tx, channel: str, event: Event, headers: dict[str, str] | None = None) -> None:
        """Store `event` for `channel` (a contract channel name) in the caller's transaction."""
        all_headers = {
            EVENT_ID_HEADER: str(event.event_id),
            EVENT_TYPE_HEADER: event.event_type,  # type: ignore[attr-defined]
            **trace_headers(),
            **(headers or {}),
        }
        tx.execute(
            f"INSERT INTO {self.table} (channel, msg_key, body, headers) VALUES (?, ?, ?, ?)",
            (channel, event.order_id, event.to_json_bytes().decode(), json.dumps(all_headers)),
        )

    def notify(self) -> None:
        """Wake the relay: something was committed."""
        self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._relay(), name=f"outbox-relay:{self.table}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def pending(self) -> int:
        row = await self.db.transaction(lambda tx: tx.fetchone(f"SELECT COUNT(*) FROM {self.table} "))
        return int(row[0]) if row else 0

    async def _relay(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                published = await self.publish_pending()
            except Exception:
                log.warning("outbox relay: publish failed, retrying in %.0fs", BROKER_DOWN_BACKOFF_S, exc_info=True)
                await asyncio.sleep(BROKER_DOWN_BACKOFF_S)
                continue
            if published < BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), IDLE_POLL_S)

    async def publish_pending(self) -> int:
        """Publish one batch of unsent events; returns how many were published."""
        rows = await self.db.transaction(
            lambda tx: tx.fetchall(
                f"SELECT id, channel, msg_key, body, headers FROM {self.table} ORDER BY id LIMIT ?",
                (BATCH,),
            )
        )
        messages = [
            Outgoing(self._channels.get(channel, channel), body.encode(), key, json.loads(headers))
            for _, channel, key, body, headers in rows
        ]
        outcomes = await self.transport.publish_batch(messages)
        sent = [row[0] for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
        if sent:
            await self.db.transaction(lambda tx: self._forget(tx, sent))
        failures = [o for o in outcomes if o is not None]
        if failures:
            raise failures[0]
        return len(sent)

    def _forget(self, tx: Tx, ids: list[int]) -> None:
        marks = ",".join("?" * len(ids))
        tx.execute(f"DELETE FROM {self.table} WHERE id IN ({marks})", ids)
