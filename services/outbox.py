"""Transactional outbox: events are written with the state change, published later.

Contract: `Outbox.add(tx, channel, event)` stores the event inside the caller's
transaction, so the state change and its event commit or vanish together. The
relay publishes a batch of stored events at a time with `Transport.publish_batch`
(sends started in insertion order, so one key's events keep their order on Kafka),
marks each sent after the broker confirmed it, and keeps retrying while the broker
is down (so an HTTP request can be accepted during a broker outage). Each event carries the trace context of
the transaction that wrote it. A crash between publish and mark may publish
an event twice; consumers are idempotent by `eventId`.

Flow control: `caught_up()` lets a consumer wait while more than HIGH_WATER events are
waiting for the relay, so a consumer working through a backlog cannot run ahead of the
publishing of its outcomes. Without it the relay, which needs several event-loop turns per
round (select, publish and confirm, delete) while a consumer batch takes one, fell behind:
the outbox grew by thousands of rows and the outcomes came out seconds late, in one burst
once the backlog was done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from brokers.base import EVENT_ID_HEADER, EVENT_TYPE_HEADER, LINGER_BELOW, Outgoing
from services.tasks import cancel_and_wait
from services.tracing import trace_headers

if TYPE_CHECKING:
    from brokers.base import Transport
    from services.events import Event
    from services.store import Database, Tx

log = logging.getLogger("switchboard.outbox")

BATCH = 1024
"""Events published per relay round (one select, one publish batch, one delete)."""
HIGH_WATER = BATCH
"""`caught_up()` waits while more events than this wait for the relay."""
CATCH_UP_WAIT_S = 1.0
"""`caught_up()` waits at most this long: a relay that cannot publish (broker down, a channel
refused) slows the consumers down but does not stop them."""
IDLE_POLL_S = 1.0
RELAY_LINGER_S = 0.003
"""After a round of fewer than LINGER_BELOW events, the relay, once woken, lets the events
committed within this long join its next round: at moderate rates each event would otherwise
get a round (select, publish and confirm, delete) of its own. Under load rounds are large and
follow each other without it (a pause there would leave the consumers waiting for the relay)."""
BROKER_DOWN_BACKOFF_S = 1.0


class Outbox:
    def __init__(self, db: Database, transport: Transport, table: str, resolve_channel: dict[str, str]) -> None:
        self.db = db
        self.transport = transport
        self.table = table
        self._channels = resolve_channel
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._added = 0
        """Events added so far (committed or not)."""
        self._unpublished = 0
        """Events waiting for the relay, as far as this process knows: exact after a relay round
        that emptied the table, counting events of rolled-back transactions until then."""

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
        self._added += 1
        self._unpublished += 1

    def notify(self) -> None:
        """Wake the relay: something was committed."""
        self._wakeup.set()

    async def caught_up(self) -> None:
        """Return once at most HIGH_WATER events wait for the relay (or after CATCH_UP_WAIT_S, or
        at once when the relay does not run)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CATCH_UP_WAIT_S):
                while self._unpublished > HIGH_WATER and self._task is not None and not self._task.done():
                    self._progress.clear()
                    await self._progress.wait()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._relay(), name=f"outbox-relay:{self.table}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
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
                    async with asyncio.timeout(IDLE_POLL_S):
                        await self._wakeup.wait()
                if published < LINGER_BELOW:
                    await asyncio.sleep(RELAY_LINGER_S)

    async def publish_pending(self) -> int:
        """Publish one batch of unsent events; returns how many were published."""
        added_before_select = 0

        def select(tx: Tx) -> list[tuple[Any, ...]]:
            nonlocal added_before_select
            added_before_select = self._added  # transactions run one at a time: all of these are settled
            return tx.fetchall(
                f"SELECT id, channel, msg_key, body, headers FROM {self.table} ORDER BY id LIMIT ?", (BATCH,)
            )

        rows = await self.db.transaction(select)
        messages = [
            Outgoing(self._channels.get(channel, channel), body.encode(), key, json.loads(headers))
            for _, channel, key, body, headers in rows
        ]
        outcomes = await self.transport.publish_batch(messages)
        sent = [row[0] for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
        if sent:
            await self.db.transaction(lambda tx: self._forget(tx, sent))
        failures = [o for o in outcomes if o is not None]
        self._count_published(len(sent), emptied=len(rows) < BATCH and not failures, added_before=added_before_select)
        if failures:
            raise failures[0]
        return len(sent)

    def _count_published(self, sent: int, *, emptied: bool, added_before: int) -> None:
        if emptied:  # the table held nothing else at the select: only later events wait
            self._unpublished = self._added - added_before
        else:
            self._unpublished = max(self._unpublished - sent, 0)
        self._progress.set()

    def _forget(self, tx: Tx, ids: list[int]) -> None:
        marks = ",".join("?" * len(ids))
        tx.execute(f"DELETE FROM {self.table} WHERE id IN ({marks})", ids)
