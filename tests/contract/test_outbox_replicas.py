"""Two replicas' outbox relays on one PostgreSQL table (two `Outbox`es on two `Database`
connections): only one publishes, so every event is published exactly once; when the leader's
connection closes, the other takes over within an idle poll and publishes the rest."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import psycopg
import pytest

from brokers.model import EVENT_ID_HEADER, Outgoing
from services import outbox as outbox_module
from services.events import InventoryRejected
from services.outbox import IDLE_POLL_S, Outbox
from services.store import Database, Tx
from tests.support.system import eventually, uid

pytestmark = pytest.mark.contract

EVENTS = 500
WRITES = 20
"""Transactions the events are added in, alternately through either replica."""
ROUND = 50
"""Events per relay round (BATCH), so the leader publishes in several rounds."""
LEADER_SHARE = 200
"""Once the first leader has published this many events, its next round never completes (it dies mid-round)."""
STOP_TIMEOUT_S = 10


class Recorder:
    """The broker as both replicas see it: which replica published which event ids. With
    `leader_share`, the first replica to publish dies mid-round once it published that many."""

    def __init__(self, leader_share: int | None = None) -> None:
        self.leader_share = leader_share
        self.published: dict[str, list[str]] = {}
        self.leader: str | None = None
        self.leader_stuck = asyncio.Event()
        self.first_publish_at: dict[str, float] = {}

    def transport(self, replica: str) -> RecordingTransport:
        self.published[replica] = []
        return RecordingTransport(self, replica)

    def all_ids(self) -> list[str]:
        return [event_id for ids in self.published.values() for event_id in ids]


class RecordingTransport:
    def __init__(self, recorder: Recorder, replica: str) -> None:
        self.recorder = recorder
        self.replica = replica

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        rec = self.recorder
        if messages:
            rec.leader = rec.leader or self.replica
            rec.first_publish_at.setdefault(self.replica, time.monotonic())
            dying = rec.leader_share is not None and len(rec.published[self.replica]) >= rec.leader_share
            if self.replica == rec.leader and dying:
                rec.leader_stuck.set()
                await asyncio.Event().wait()  # never confirms: the leader is dying
        rec.published[self.replica].extend(m.headers[EVENT_ID_HEADER] for m in messages)
        return [None] * len(messages)


@pytest.fixture
async def database_url(postgres_server: str) -> AsyncIterator[str]:
    database = uid("sb_outbox_")
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    try:
        yield f"{postgres_server}/{database}"
    finally:
        with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


@asynccontextmanager
async def two_relays(
    database_url: str, recorder: Recorder
) -> AsyncIterator[tuple[dict[str, Database], dict[str, Outbox]]]:
    """Replicas "a" and "b": an outbox relay each, on a connection of its own to one table."""
    dbs = {name: Database(database_url) for name in ("a", "b")}
    boxes = {name: Outbox(db, recorder.transport(name), "order_outbox", {}) for name, db in dbs.items()}  # type: ignore[arg-type]
    try:
        for name, db in dbs.items():
            await db.connect(boxes[name].ddl())
            boxes[name].start()
        yield dbs, boxes
    finally:
        for box in boxes.values():
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await box.stop()
        for db in dbs.values():
            await db.close()


def add_events(box: Outbox, first: int, count: int) -> Callable[[Tx], None]:
    def write(tx: Tx) -> None:
        for i in range(first, first + count):
            box.add(tx, "inventory-events", InventoryRejected(order_id=f"o{i}", reason="test"))

    return write


async def test_one_relay_publishes_each_event_once_and_the_other_takes_over_when_it_dies(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "BATCH", ROUND)
    recorder = Recorder(leader_share=LEADER_SHARE)
    async with two_relays(database_url, recorder) as (dbs, boxes):
        per_write = EVENTS // WRITES
        for i in range(WRITES):
            name = "ab"[i % 2]
            await dbs[name].transaction(add_events(boxes[name], i * per_write, per_write))
            boxes[name].notify()

        await asyncio.wait_for(recorder.leader_stuck.wait(), 30)
        leader = recorder.leader
        assert leader is not None
        other = "b" if leader == "a" else "a"
        leader_published = len(recorder.published[leader])
        assert leader_published >= LEADER_SHARE
        assert recorder.published[other] == [], "both relays published"
        assert boxes[other].stalled_for() == 0, "a relay that is not the leader is not stalled"

        await dbs[leader].close()  # its session ends: the lock is free
        closed_at = time.monotonic()
        await eventually(
            lambda: asyncio.sleep(0, len(recorder.all_ids())),
            lambda published: published >= EVENTS,
            timeout=30,
            what=f"all {EVENTS} events published",
        )
        assert recorder.first_publish_at[other] - closed_at <= IDLE_POLL_S + 1.0, "the takeover took too long"
        published = Counter(recorder.all_ids())
        assert len(published) == EVENTS
        assert [event_id for event_id, times in published.items() if times > 1] == []
        assert len(recorder.published[other]) == EVENTS - leader_published
        assert await boxes[other].pending() == 0


async def test_a_relay_whose_session_is_terminated_stops_publishing_and_the_other_takes_over(
    database_url: str, postgres_server: str
) -> None:
    recorder = Recorder()
    half = EVENTS // 2
    async with two_relays(database_url, recorder) as (dbs, boxes):
        await dbs["a"].transaction(add_events(boxes["a"], 0, half))
        boxes["a"].notify()
        await eventually(
            lambda: asyncio.sleep(0, len(recorder.all_ids())), lambda n: n >= half, timeout=30, what="first half"
        )
        leader = recorder.leader
        assert leader is not None
        other = "b" if leader == "a" else "a"
        row = await dbs[leader].transaction(lambda tx: tx.fetchone("SELECT pg_backend_pid()"))
        assert row is not None
        with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))

        await dbs[other].transaction(add_events(boxes[other], half, EVENTS - half))
        boxes[other].notify()
        await eventually(
            lambda: asyncio.sleep(0, len(recorder.all_ids())), lambda n: n >= EVENTS, timeout=30, what="second half"
        )
        published = Counter(recorder.all_ids())
        assert (len(published), max(published.values())) == (EVENTS, 1)
        assert (len(recorder.published[leader]), len(recorder.published[other])) == (half, EVENTS - half)
        await eventually(
            lambda: asyncio.sleep(0, boxes[leader].stalled_for()),
            lambda stalled: stalled > 0,
            timeout=10,
            what="the cut-off relay reporting its stall",
        )
        assert boxes[other].stalled_for() == 0


async def test_an_outbox_table_from_before_created_at_gets_the_column_once(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE order_outbox (id BIGSERIAL PRIMARY KEY, channel TEXT NOT NULL, msg_key TEXT NOT NULL,"
            " body TEXT NOT NULL, headers TEXT NOT NULL)"
        )
        conn.execute("INSERT INTO order_outbox (channel, msg_key, body, headers) VALUES ('c', 'k', '{}', '{}')")
    for _ in range(2):  # a restart runs the schema again
        db = Database(database_url)
        box = Outbox(db, Recorder().transport("a"), "order_outbox", {})  # type: ignore[arg-type]
        await db.connect(box.ddl())
        try:
            await db.transaction(add_events(box, 0, 1))
            pending, age = await box.backlog()
            assert pending >= 2
            assert 0 <= age < 5  # the old row has no created_at: the age is the new one's
        finally:
            await db.close()
