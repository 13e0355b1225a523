"""The order's final status depends on which events it got, never on the order they came in:
every permutation of each saga outcome's events (and of their duplicates) through the order
service's real handlers and SQLite store; and a move another replica commits between two
statements of this one never moves the status back."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from itertools import permutations
from typing import Any

import pytest

from config import Settings
from services import order
from services.events import (
    Event,
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    PaymentFailed,
    PaymentProcessed,
)
from services.store import Tx
from tests.support.system import uid

orders = order.Orders.create(
    Settings(broker="kafka", data_dir=tempfile.mkdtemp(prefix="sb-unit-"), channel_namespace="")
)
service = orders.service
DECLINED = "payment declined for user declined-7"
NO_STOCK = "insufficient stock for P1: requested 2, available 1"

EVENTS: dict[str, Callable[[str], Event]] = {
    "reserved": lambda oid: InventoryReserved(order_id=oid, items=[{"productId": "P1", "quantity": 2}]),
    "rejected": lambda oid: InventoryRejected(order_id=oid, reason=NO_STOCK),
    "released": lambda oid: InventoryReleased(order_id=oid, items=[{"productId": "P1", "quantity": 2}]),
    "paid": lambda oid: PaymentProcessed(order_id=oid, amount=20.0),
    "declined": lambda oid: PaymentFailed(order_id=oid, reason=DECLINED),
}
OUTCOMES = {  # the events each saga outcome sends the order service, and where the order ends
    "confirmed": (("reserved", "paid"), "CONFIRMED", None),
    "cancelled": (("reserved", "declined", "released"), "CANCELLED", DECLINED),
    "rejected": (("rejected",), "REJECTED", NO_STOCK),
}


@pytest.fixture
async def store() -> AsyncIterator[None]:
    await service.db.connect(service.schema)
    yield
    await service.db.close()


async def place() -> str:
    order_id = uid("saga-")
    placed = order.PlaceOrder(order_id=order_id, items=[{"productId": "P1", "quantity": 2}])
    assert await service.db.transaction(lambda tx: orders.place(tx, order_id, placed))
    return order_id


async def deliver(event: Event) -> None:
    """What the order service's subscriptions do with the event."""
    if isinstance(event, InventoryReserved | InventoryRejected | InventoryReleased):
        await orders.track_inventory(event)
    else:
        assert isinstance(event, PaymentProcessed | PaymentFailed)
        await orders.track_payment(event)


async def status_of(order_id: str) -> tuple[Any, ...] | None:
    return await service.db.transaction(
        lambda tx: tx.fetchone(f"SELECT status, reason FROM {order.ORDERS} WHERE order_id = ?", (order_id,))
    )


@pytest.mark.usefixtures("store")
@pytest.mark.parametrize("copies", [1, 2], ids=["once", "duplicated"])
@pytest.mark.parametrize("outcome", list(OUTCOMES))
async def test_every_arrival_order_ends_in_the_same_status(outcome: str, copies: int) -> None:
    kinds, final, reason = OUTCOMES[outcome]
    arrivals = sorted(set(permutations(kinds * copies)))
    ended = {}
    for arrival in arrivals:
        order_id = await place()
        for kind in arrival:
            await deliver(EVENTS[kind](order_id))
        ended[arrival] = await status_of(order_id)

    assert ended == dict.fromkeys(arrivals, (final, reason))


class Interleaved(Tx):
    """This move's cursor; another replica's move commits right before its statement number `at`
    (or after its last one), as READ COMMITTED lets it between two statements."""

    def __init__(self, tx: Tx, at: int, other: Callable[[Tx], object]) -> None:
        self._tx = tx
        self._at = at
        self._other = other
        self._statements = 0

    def _next_statement(self) -> None:
        if self._statements == self._at:
            self._other(self._tx)
        self._statements += 1

    def finish(self) -> None:
        """Let the other move in after this move's last statement, if it has not come in yet."""
        if self._statements <= self._at:
            self._other(self._tx)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._next_statement()
        return self._tx.execute(sql, params)

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self._next_statement()
        return self._tx.fetchone(sql, params)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._next_statement()
        return self._tx.fetchall(sql, params)


MAX_STATEMENTS = 3 * order.PAYMENT_ATTEMPTS + 1
"""More statements than a move runs: the other move comes in at every point of it."""
MOVES: dict[str, Callable[[Tx, str], object]] = {
    "reserve": lambda tx, oid: order._reserve(tx, oid),
    "pay": lambda tx, oid: order._pay(tx, oid, "PaymentProcessed", "CONFIRMED", None),
    "decline": lambda tx, oid: order._pay(tx, oid, "PaymentFailed", "CANCELLED", DECLINED),
}


@pytest.mark.usefixtures("store")
@pytest.mark.parametrize(
    ("this", "other", "final"),
    [
        ("reserve", "pay", ("CONFIRMED", None)),
        ("pay", "reserve", ("CONFIRMED", None)),
        ("reserve", "decline", ("CANCELLED", DECLINED)),
        ("decline", "reserve", ("CANCELLED", DECLINED)),
    ],
)
async def test_a_move_committed_between_the_statements_of_another_never_moves_the_status_back(
    this: str, other: str, final: tuple[str, str | None]
) -> None:
    for at in range(MAX_STATEMENTS + 1):
        order_id = await place()

        def this_move(tx: Tx, order_id: str = order_id, at: int = at) -> None:
            interleaved = Interleaved(tx, at, lambda inner: MOVES[other](inner, order_id))
            MOVES[this](interleaved, order_id)
            interleaved.finish()

        await service.db.transaction(this_move)
        assert await status_of(order_id) == final, f"the other move came in before statement {at}"


@pytest.mark.usefixtures("store")
@pytest.mark.parametrize("first", ["payment", "rejection"])
async def test_a_payment_for_an_order_never_reserved_is_ignored_and_counted(first: str) -> None:
    order_id = await place()
    events = [EVENTS["paid"](order_id), EVENTS["rejected"](order_id)]
    before = _impossible_count()
    for event in events if first == "payment" else reversed(events):
        await deliver(event)
    assert await status_of(order_id) == ("REJECTED", NO_STOCK)
    assert _impossible_count() == before + 1


@pytest.mark.usefixtures("store")
async def test_a_payment_for_an_unknown_order_is_ignored_and_counted() -> None:
    before = _impossible_count()
    await deliver(EVENTS["paid"](uid("unknown-")))
    assert _impossible_count() == before + 1


@pytest.mark.usefixtures("store")
async def test_a_payment_that_came_first_waits_for_the_reservation() -> None:
    order_id = await place()
    await deliver(EVENTS["paid"](order_id))
    assert await status_of(order_id) == ("PENDING", None)
    await deliver(EVENTS["reserved"](order_id))
    assert await status_of(order_id) == ("CONFIRMED", None)


def _impossible_count() -> float:
    return sum(
        sample.value
        for metric in service.registry.collect()
        if metric.name == "saga_impossible_events"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )
