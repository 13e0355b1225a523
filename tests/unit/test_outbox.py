"""The outbox's flow control: a consumer waits while the relay is behind, never forever;
and the relay stops when asked to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from brokers.model import Outgoing
from services import outbox as outbox_module
from services.events import InventoryRejected
from services.outbox import HIGH_WATER, Outbox
from services.store import Database, Tx
from tests.support.system import eventually

STOP_TIMEOUT_S = 10


class GatedTransport:
    """Confirms publishes only once `open` is set; records what it published."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.published: list[Outgoing] = []

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        await self.open.wait()
        self.published.extend(messages)
        return [None] * len(messages)


@asynccontextmanager
async def running_outbox(tmp_path: Path, transport: GatedTransport) -> AsyncIterator[tuple[Database, Outbox]]:
    db = Database(f"sqlite:///{tmp_path / 'outbox.db'}")
    box = Outbox(db, transport, "outbox", {})  # type: ignore[arg-type]
    await db.connect(box.ddl())
    box.start()
    try:
        yield db, box
    finally:
        async with asyncio.timeout(STOP_TIMEOUT_S):  # a cancellation the relay swallowed would hang here
            await box.stop()
        await db.close()


def add_events(box: Outbox, count: int) -> Callable[[Tx], None]:
    def write(tx: Tx) -> None:
        for i in range(count):
            box.add(tx, "inventory-events", InventoryRejected(order_id=f"o{i}", reason="test"))

    return write


async def test_a_consumer_waits_while_the_relay_is_behind_then_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "CATCH_UP_WAIT_S", 30.0)
    transport = GatedTransport()
    async with running_outbox(tmp_path, transport) as (db, box):
        await db.transaction(add_events(box, HIGH_WATER + 1))
        box.notify()
        waiting = asyncio.create_task(box.caught_up())
        done, _ = await asyncio.wait([waiting], timeout=0.3)
        assert not done, "caught_up returned while more than HIGH_WATER events were unpublished"

        transport.open.set()
        await asyncio.wait_for(waiting, 10)
        assert transport.published, "caught_up returned before the relay published anything"


async def test_a_relay_that_cannot_publish_slows_consumers_down_without_stopping_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "CATCH_UP_WAIT_S", 0.2)
    async with running_outbox(tmp_path, GatedTransport()) as (db, box):  # never confirms
        await db.transaction(add_events(box, HIGH_WATER + 1))
        box.notify()
        await asyncio.wait_for(box.caught_up(), 5)


async def test_events_of_rolled_back_transactions_stop_counting_after_a_relay_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "CATCH_UP_WAIT_S", 30.0)
    transport = GatedTransport()
    transport.open.set()
    async with running_outbox(tmp_path, transport) as (db, box):
        write = add_events(box, HIGH_WATER + 1)

        def write_then_fail(tx: Tx) -> None:
            write(tx)
            raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            await db.transaction(write_then_fail)
        box.notify()
        await asyncio.wait_for(box.caught_up(), 10)
        assert transport.published == []


class RoundRecordingTransport(GatedTransport):
    """Confirms at once; records the size of each relay round."""

    def __init__(self) -> None:
        super().__init__()
        self.open.set()
        self.rounds: list[int] = []

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        self.rounds.append(len(messages))
        return await super().publish_batch(messages)


async def test_after_a_tiny_round_events_committed_shortly_after_share_the_next_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "RELAY_LINGER_S", 0.5)
    transport = RoundRecordingTransport()
    async with running_outbox(tmp_path, transport) as (db, box):
        await eventually(  # the relay's first round found nothing: it waits for work
            lambda: asyncio.sleep(0, list(transport.rounds)), lambda rounds: rounds == [0], timeout=10, what="idle"
        )
        await db.transaction(add_events(box, 1))
        box.notify()
        for _ in range(5):  # a few loop turns later, as the next order of a moderate stream
            await asyncio.sleep(0)
        await db.transaction(add_events(box, 1))
        box.notify()
        await eventually(
            lambda: asyncio.sleep(0, len(transport.published)),
            lambda published: published >= 2,
            timeout=10,
            what="both events published",
        )

    assert transport.rounds == [0, 2]
