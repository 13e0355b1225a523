"""Transactional outbox: events are written with the state change, published later.

Contract: `Outbox.add(tx, channel, event)` stores the event inside the caller's
transaction, so the state change and its event commit or vanish together. The
relay publishes a batch of stored events at a time with `BatchPublisher.publish_batch`
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

Replicas: on PostgreSQL, several processes may share one outbox table; only the one holding the
table's session-level advisory lock (`pg_try_advisory_lock`) publishes, so no event is published
twice in normal operation. The others retry the lock every IDLE_POLL_S and take over within that
long once the leader's connection closes (its process stopped or died). After a failed round a relay
takes the lock again before it publishes (its session may be gone). SQLite: one process per file, no lock.

Health: `stalled_for()` is how long this process's relay has been unable to publish (its rounds
fail, or one round runs on); `refresh_gauges()` reports the backlog on /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Gauge

from brokers import EVENT_ID_HEADER, EVENT_TYPE_HEADER, LINGER_BELOW, Outgoing
from services.tasks import cancel_and_wait
from services.tracing import trace_headers

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

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


class BatchPublisher(Protocol):
    """All the outbox needs of a transport (a `brokers.Transport` is one)."""

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Publish `messages`, sends started in order; one outcome per message: None once the
        broker confirmed it, else the error."""
        ...


def advisory_lock_key(table: str) -> int:
    """The PostgreSQL advisory lock (a signed 64-bit key) of the relay of `table`: the same in every process."""
    digest = hashlib.blake2b(f"switchboard.outbox:{table}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Outbox:
    """One table's events and their relay. Rule for replicas sharing the table (PostgreSQL): only the
    relay holding the table's advisory lock publishes; the others stand by and retry it each idle poll."""

    def __init__(
        self,
        db: Database,
        transport: BatchPublisher,
        table: str,
        resolve_channel: dict[str, str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.transport = transport
        self.table = table
        self._channels = resolve_channel
        self._clock = clock
        self._lock_key = advisory_lock_key(table)
        self._leading: bool | None = True if db.dialect == "sqlite" else None
        """True: this relay publishes; False: another replica's does (lock taken); None: to be found out."""
        self._waiting_seen = 0
        """Events in the table at this relay's last look, while another replica's relay publishes them."""
        self._round_started: float | None = None
        self._failing_since: float | None = None
        """Start of the first failed round since the last good one."""
        self._gauges: tuple[Any, Any] | None = None
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._added = 0
        """Events added so far (committed or not)."""
        self._unpublished = 0
        """Events waiting for the relay, as far as this process knows: exact after a relay round
        that emptied the table, counting events of rolled-back transactions until then."""

    def ddl(self) -> list[str]:
        """`created_at`: epoch seconds of the `add` (NULL in rows of tables created before it)."""
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            f" id {self.db.autoincrement_pk}, channel TEXT NOT NULL, msg_key TEXT NOT NULL,"
            " body TEXT NOT NULL, headers TEXT NOT NULL, created_at DOUBLE PRECISION)",
            f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS created_at DOUBLE PRECISION",
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
            f"INSERT INTO {self.table} (channel, msg_key, body, headers, created_at) VALUES (?, ?, ?, ?, ?)",
            (channel, event.order_id, event.to_json_bytes().decode(), json.dumps(all_headers), time.time()),
        )
        self._added += 1
        self._unpublished += 1

    def notify(self) -> None:
        """Wake the relay: something was committed."""
        self._wakeup.set()

    async def caught_up(self) -> None:
        """Return once at most HIGH_WATER events wait for the relay (or after CATCH_UP_WAIT_S, or
        at once when the relay does not run). While another replica's relay publishes, the events
        waiting are those this relay saw in the table at its last look."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CATCH_UP_WAIT_S):
                while self._waiting() > HIGH_WATER and self._task is not None and not self._task.done():
                    self._progress.clear()
                    await self._progress.wait()

    def _waiting(self) -> int:
        return self._waiting_seen if self._leading is False else self._unpublished

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._relay(), name=f"outbox-relay:{self.table}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def pending(self) -> int:
        row = await self.db.transaction(lambda tx: tx.fetchone(f"SELECT COUNT(*) FROM {self.table} "))
        return int(row[0]) if row else 0

    async def backlog(self) -> tuple[int, float]:
        """Events waiting in the table (any replica's), and the age in seconds of the oldest (0 when none)."""
        row = await self.db.transaction(lambda tx: tx.fetchone(f"SELECT COUNT(*), MIN(created_at) FROM {self.table}"))
        count, oldest = (int(row[0]), row[1]) if row else (0, None)
        return count, max(time.time() - oldest, 0.0) if count and oldest is not None else 0.0

    async def refresh_gauges(self, registry: CollectorRegistry, broker: str) -> None:
        """Set `outbox_pending_events` and `outbox_oldest_event_age_seconds` (registered in `registry`
        at the first call, labelled `broker`) from one look at the table; NaN if the store did not answer."""
        if self._gauges is None:
            self._gauges = (
                Gauge(
                    "outbox_pending_events",
                    "Events waiting in this service's outbox table.",
                    ("broker",),
                    registry=registry,
                ).labels(broker=broker),
                Gauge(
                    "outbox_oldest_event_age_seconds",
                    "Age of the oldest event waiting in the outbox (0: none).",
                    ("broker",),
                    registry=registry,
                ).labels(broker=broker),
            )
        pending_gauge, age_gauge = self._gauges
        try:
            pending, age = await self.backlog()
        except Exception:
            log.debug("outbox backlog unavailable", exc_info=True)
            pending_gauge.set(math.nan)  # unknown, not zero
            age_gauge.set(math.nan)
            return
        pending_gauge.set(pending)
        age_gauge.set(age)

    def stalled_for(self) -> float:
        """Seconds this process's relay has been unable to publish: since the first of its rounds that
        failed since the last good one, or since the start of a round still running. 0 while it is not
        running and while another replica's relay publishes."""
        if self._task is None or self._leading is False:
            return 0.0
        since = [t for t in (self._failing_since, self._round_started) if t is not None]
        return max(self._clock() - min(since), 0.0) if since else 0.0

    async def _relay(self) -> None:
        while True:
            self._wakeup.clear()
            self._round_started = self._clock()
            try:
                leading = await self._lead()
                published = await self.publish_pending() if leading else 0
            except Exception:
                if self._failing_since is None:
                    self._failing_since = self._round_started
                if self.db.dialect != "sqlite":
                    self._leading = None  # the session, and the lock with it, may be gone
                log.warning("outbox relay: publish failed, retrying in %.0fs", BROKER_DOWN_BACKOFF_S, exc_info=True)
                self._round_started = None
                await asyncio.sleep(BROKER_DOWN_BACKOFF_S)
                continue
            self._round_started = self._failing_since = None
            if not leading:
                await asyncio.sleep(IDLE_POLL_S)
                continue
            if published < BATCH:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_POLL_S):
                        await self._wakeup.wait()
                if published < LINGER_BELOW:
                    await asyncio.sleep(RELAY_LINGER_S)

    async def _lead(self) -> bool:
        """Whether this relay publishes: on PostgreSQL, once it took the table's advisory lock, which
        its session keeps (it is never unlocked: taking it again while held only counts it twice)."""
        if self._leading:
            return True
        added_before = 0

        def try_lock(tx: Tx) -> tuple[Any, ...] | None:
            nonlocal added_before
            added_before = self._added  # transactions run one at a time: all of these are settled
            return tx.fetchone(
                f"SELECT pg_try_advisory_lock(?::bigint), (SELECT COUNT(*) FROM {self.table})", (self._lock_key,)
            )

        row = await self.db.transaction(try_lock)
        leading, waiting = (bool(row[0]), int(row[1])) if row else (False, 0)
        if leading != self._leading:
            log.info("outbox relay of %s: %s", self.table, "publishing" if leading else "another replica publishes")
        self._leading = leading
        if leading:
            self._unpublished = waiting + self._added - added_before
        else:
            self._waiting_seen = waiting
            self._progress.set()
        return leading

    async def publish_pending(self) -> int:
        """Publish one batch of unsent events; returns how many were published. Only the relay
        calls it, and only while it leads (module docstring)."""
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
