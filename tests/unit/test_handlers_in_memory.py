"""Handlers and the delivery policy on the in-memory transport (`brokers.memory`; no broker needed)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator

import pytest

from brokers import Transport
from config import Settings
from services import inventory
from services.events import OrderCreated
from tests.support.system import eventually

service = inventory.create_service(
    Settings(
        broker="memory",
        broker_url="memory://handlers-in-memory",
        data_dir=tempfile.mkdtemp(prefix="sb-unit-"),
        channel_namespace="",
    )
)


class Publisher:
    """Publishes as a foreign producer would, and waits until the service handled it."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def publish(self, body: dict | bytes, channel: str, key: bytes) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.transport.publish(channel, raw, key=key.decode(), headers={})
        await eventually(
            lambda: self.transport.consumer_lag(channel, service.consumer), lambda lag: lag == 0, timeout=5
        )
        await self.transport.settled()


@pytest.fixture(scope="module")
async def broker() -> AsyncIterator[Publisher]:
    """One running service for the module (a stopped transport is not started again)."""
    await service.db.connect(service.schema)
    await service.transport.start()
    yield Publisher(service.transport)
    await service.transport.stop()
    await service.db.close()


async def stock(product: str) -> int | None:
    row = await service.db.transaction(
        lambda tx: tx.fetchone(f"SELECT available FROM {inventory.STOCK} WHERE product_id = ?", (product,))
    )
    return row[0] if row else None


async def outbox_events() -> list[dict]:
    rows = await service.db.transaction(lambda tx: tx.fetchall(f"SELECT body FROM {service.outbox.table} ORDER BY id"))
    return [json.loads(r[0]) for r in rows]


async def set_stock(product: str, available: int) -> None:
    await service.db.transaction(
        lambda tx: tx.execute(
            f"INSERT INTO {inventory.STOCK} (product_id, available) VALUES (?, ?) "
            "ON CONFLICT (product_id) DO UPDATE SET available = excluded.available",
            (product, available),
        )
    )


async def test_order_created_reserves_stock_once_and_writes_the_outcome(broker: Publisher) -> None:
    await set_stock("U1", 5)
    event = OrderCreated(order_id="u-1", items=[{"productId": "U1", "quantity": 2}])

    for _ in range(2):  # a redelivery has no second effect
        await broker.publish(event.model_dump(mode="json", by_alias=True), "order-events", key=b"u-1")

    assert await stock("U1") == 3
    outcomes = [e for e in await outbox_events() if e["orderId"] == "u-1"]
    assert [e["eventType"] for e in outcomes] == ["InventoryReserved"]


async def test_seed_flat_event_is_accepted(broker: Publisher) -> None:
    await set_stock("U2", 5)
    await broker.publish({"orderId": "u-2", "productId": "U2", "quantity": 5}, "order-events", key=b"u-2")
    assert await stock("U2") == 0


async def test_all_or_nothing_when_one_item_is_short(broker: Publisher) -> None:
    await set_stock("U3", 5)
    await set_stock("U4", 1)
    event = OrderCreated(order_id="u-3", items=[{"productId": "U3", "quantity": 2}, {"productId": "U4", "quantity": 2}])

    await broker.publish(event.model_dump(mode="json", by_alias=True), "order-events", key=b"u-3")

    assert (await stock("U3"), await stock("U4")) == (5, 1)
    [outcome] = [e for e in await outbox_events() if e["orderId"] == "u-3"]
    assert outcome["eventType"] == "InventoryRejected"
    assert "U4" in outcome["reason"]


async def test_poison_goes_to_the_dead_letter_channel_with_the_envelope(broker: Publisher) -> None:
    await broker.publish(b"\xffnot json", "order-events", key=b"bad")

    # failed messages are handed to the DLT in the background, after the batch's commit
    letters = await eventually(
        lambda: service.transport.list_dead_letters("order-events", 10), lambda found: len(found) > 0, timeout=5
    )
    [letter] = letters
    assert letter.body == b"\xffnot json"
    assert letter.headers["x-original-destination"] == "order-events"
    assert letter.headers["x-consumer"] == service.consumer
    assert letter.headers["x-attempts"] == "1"
