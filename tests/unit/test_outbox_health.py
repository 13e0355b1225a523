"""The outbox's health on SQLite: the relay publishes without any lock (one process per file);
it counts as stalled once it has been unable to publish for the stall timeout, and /ready says
so until a round succeeds; /metrics reports the events waiting and the oldest one's age."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

os.environ.update({"BROKER": "kafka", "DATA_DIR": tempfile.mkdtemp(prefix="sb-unit-"), "CHANNEL_NAMESPACE": ""})

from brokers.model import EVENT_ID_HEADER, Outgoing
from services import order
from services import outbox as outbox_module
from services.outbox import Outbox
from services.store import Database
from tests.support.system import eventually
from tests.unit.test_outbox import add_events

STALL_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedTransport:
    """Refuses every publish while `failing`; holds a publish while `hold` is clear."""

    def __init__(self) -> None:
        self.failing = False
        self.hold = asyncio.Event()
        self.hold.set()
        self.calls = 0
        self.published: list[str] = []

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        self.calls += 1
        await self.hold.wait()
        if self.failing:
            return [ConnectionError("broker refused")] * len(messages)
        self.published.extend(m.headers[EVENT_ID_HEADER] for m in messages)
        return [None] * len(messages)


@asynccontextmanager
async def relay(
    tmp_path: Path, transport: ScriptedTransport, clock: Callable[[], float]
) -> AsyncIterator[tuple[Database, Outbox]]:
    db = Database(f"sqlite:///{tmp_path / 'outbox.db'}")
    box = Outbox(db, transport, "outbox", {}, clock=clock)  # type: ignore[arg-type]
    await db.connect(box.ddl())
    box.start()
    try:
        yield db, box
    finally:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await box.stop()
        await db.close()


async def poll(probe: Callable[[], object], what: str) -> None:
    await eventually(lambda: asyncio.sleep(0, probe()), bool, timeout=5, interval=0.001, what=what)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_module, "BROKER_DOWN_BACKOFF_S", 0.002)


async def test_on_sqlite_the_relay_publishes_without_taking_a_lock(tmp_path: Path) -> None:
    transport = ScriptedTransport()
    statements: list[str] = []
    async with relay(tmp_path, transport, time.monotonic) as (db, box):
        db._connection().set_trace_callback(statements.append)
        await db.transaction(add_events(box, 3))
        box.notify()
        await poll(lambda: len(transport.published) == 3, "3 events published")
        assert box.stalled_for() == 0
    assert not [s for s in statements if "lock" in s.lower()]


async def test_a_relay_whose_publishes_keep_failing_is_stalled_after_the_timeout_until_a_round_succeeds(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    transport = ScriptedTransport()
    transport.failing = True
    async with relay(tmp_path, transport, clock) as (db, box):
        await db.transaction(add_events(box, 1))
        box.notify()
        await poll(lambda: transport.calls >= 2, "two failed rounds")
        assert box.stalled_for() <= STALL_TIMEOUT_S

        clock.now += STALL_TIMEOUT_S + 1
        assert box.stalled_for() > STALL_TIMEOUT_S

        transport.failing = False
        await poll(lambda: transport.published, "a successful round")
        await poll(lambda: box.stalled_for() == 0, "no stall after the successful round")


async def test_a_round_that_never_completes_stalls_the_relay(tmp_path: Path) -> None:
    clock = FakeClock()
    transport = ScriptedTransport()
    async with relay(tmp_path, transport, clock) as (db, box):
        await poll(lambda: transport.calls == 1, "the first round (it found nothing)")
        transport.hold.clear()  # from now on the broker takes a batch and does not answer
        await db.transaction(add_events(box, 1))
        box.notify()
        await poll(lambda: transport.calls == 2, "the round publishing the event")
        clock.now += STALL_TIMEOUT_S + 1
        assert box.stalled_for() > STALL_TIMEOUT_S

        transport.hold.set()
        await poll(lambda: box.stalled_for() == 0, "no stall once the round completed")
        assert len(transport.published) == 1


async def test_gauges_report_the_events_waiting_and_the_oldest_ones_age(tmp_path: Path) -> None:
    transport = ScriptedTransport()
    transport.hold.clear()
    db = Database(f"sqlite:///{tmp_path / 'outbox.db'}")
    box = Outbox(db, transport, "outbox", {})  # type: ignore[arg-type]
    await db.connect(box.ddl())
    registry = CollectorRegistry()

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name, {"broker": "kafka"})

    try:
        await box.refresh_gauges(registry, "kafka")
        assert (sample("outbox_pending_events"), sample("outbox_oldest_event_age_seconds")) == (0, 0)

        await db.transaction(add_events(box, 3))
        await db.transaction(
            lambda tx: tx.execute("UPDATE outbox SET created_at = ? WHERE id = 2", (time.time() - 42,))
        )
        await box.refresh_gauges(registry, "kafka")
        assert sample("outbox_pending_events") == 3
        assert 42 <= sample("outbox_oldest_event_age_seconds") < 45  # type: ignore[operator]

        transport.hold.set()
        assert await box.publish_pending() == 3
        await box.refresh_gauges(registry, "kafka")
        assert (sample("outbox_pending_events"), sample("outbox_oldest_event_age_seconds")) == (0, 0)
    finally:
        await db.close()


async def test_an_outbox_table_from_before_created_at_gets_the_column_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL,"
            " msg_key TEXT NOT NULL, body TEXT NOT NULL, headers TEXT NOT NULL)"
        )
        conn.execute("INSERT INTO outbox (channel, msg_key, body, headers) VALUES ('c', 'k', '{}', '{}')")
    conn.close()
    for _ in range(2):  # a restart runs the schema again
        db = Database(f"sqlite:///{path}")
        box = Outbox(db, ScriptedTransport(), "outbox", {})  # type: ignore[arg-type]
        await db.connect(box.ddl())
        try:
            columns = await db.transaction(lambda tx: tx.fetchall("PRAGMA table_info(outbox)"))
            assert [c[1] for c in columns][-1:] == ["created_at"]
            await db.transaction(add_events(box, 1))
            pending, age = await box.backlog()
            assert pending >= 2
            assert 0 <= age < 5  # the old row has no created_at: the age is the new one's
        finally:
            await db.close()


# --- the routes of a real service --------------------------------------------------------
service = order.service


@pytest.fixture
async def http(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    async def broker_answers(within_s: float = 2.0) -> bool:  # noqa: ARG001 - Transport.ping's signature
        return True

    async def no_lag() -> None:
        pass

    monkeypatch.setattr(service.transport, "ping", broker_answers)
    monkeypatch.setattr(service.transport, "consumed_channels_available", broker_answers)
    monkeypatch.setattr(service.transport, "refresh_lag", no_lag)
    monkeypatch.setattr(service, "_subscribed", True)
    monkeypatch.setattr(service.settings, "outbox_stall_timeout_s", STALL_TIMEOUT_S)
    await service.db.connect(service.schema)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.api), base_url="http://svc") as client:
            yield client
    finally:
        await service.db.close()


async def test_ready_is_503_while_the_relay_is_stalled_and_200_again_once_it_publishes(
    http: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    transport = ScriptedTransport()
    transport.failing = True
    async with relay(tmp_path, transport, clock) as (db, box):
        monkeypatch.setattr(service, "outbox", box)
        await db.transaction(add_events(box, 1))
        box.notify()
        await poll(lambda: transport.calls >= 2, "failed rounds")
        ready = await http.get("/ready")
        assert (ready.status_code, ready.json()["outbox"]) == (200, True)

        clock.now += STALL_TIMEOUT_S + 1
        ready = await http.get("/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert {k: body[k] for k in ("status", "broker", "store", "subscribed", "outbox")} == {
            "status": "DOWN",
            "broker": True,
            "store": True,
            "subscribed": True,
            "outbox": False,
        }
        assert body["outboxStalledSeconds"] > STALL_TIMEOUT_S

        transport.failing = False
        await poll(lambda: box.stalled_for() == 0, "a successful round")
        ready = await http.get("/ready")
        assert (ready.status_code, ready.json()["outbox"], ready.json()["outboxStalledSeconds"]) == (200, True, 0)


async def test_metrics_report_the_services_outbox_backlog(http: httpx.AsyncClient) -> None:
    box = service.outbox  # its relay does not run: the events wait
    before = await box.pending()
    await service.db.transaction(add_events(box, 2))
    text = (await http.get("/metrics")).text
    label = f'{{broker="{service.transport.label}"}}'
    assert f"outbox_pending_events{label} {float(before + 2)}" in text
    age = next(line for line in text.splitlines() if line.startswith(f"outbox_oldest_event_age_seconds{label}"))
    assert 0 <= float(age.split()[-1]) < 60
