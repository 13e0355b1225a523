"""Handlers and the delivery policy on FastStream's in-memory Kafka test broker (no broker needed)."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator

import pytest

os.environ.update({"BROKER": "kafka", "DATA_DIR": tempfile.mkdtemp(prefix="sb-unit-"), "CHANNEL_NAMESPACE": ""})

from faststream.kafka import TestKafkaBroker

from services import inventory
from services.events import OrderCreated
from tests.support.system import eventually

service = inventory.service


@pytest.fixture
async def broker() -> AsyncIterator[TestKafkaBroker]:
    async with TestKafkaBroker(service.transport.broker) as br:
        await service.db.connect(service.schema)
        yield br
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


async def test_order_created_reserves_stock_once_and_writes_the_outcome(broker: TestKafkaBroker) -> None:
    await set_stock("U1", 5)
    event = OrderCreated(order_id="u-1", items=[{"productId": "U1", "quantity": 2}])

    for _ in range(2):  # a redelivery has no second effect
        await broker.publish(event.model_dump(mode="json", by_alias=True), "order-events", key=b"u-1")

    assert await stock("U1") == 3
    outcomes = [e for e in await outbox_events() if e["orderId"] == "u-1"]
    assert [e["eventType"] for e in outcomes] == ["InventoryReserved"]


async def test_seed_flat_event_is_accepted(broker: TestKafkaBroker) -> None:
    await set_stock("U2", 5)
    await broker.publish({"orderId": "u-2", "productId": "U2", "quantity": 5}, "order-events", key=b"u-2")
    assert await stock("U2") == 0


async def test_all_or_nothing_when_one_item_is_short(broker: TestKafkaBroker) -> None:
    await set_stock("U3", 5)
    await set_stock("U4", 1)
    event = OrderCreated(order_id="u-3", items=[{"productId": "U3", "quantity": 2}, {"productId": "U4", "quantity": 2}])

    await broker.publish(event.model_dump(mode="json", by_alias=True), "order-events", key=b"u-3")

    assert (await stock("U3"), await stock("U4")) == (5, 1)
    [outcome] = [e for e in await outbox_events() if e["orderId"] == "u-3"]
    assert outcome["eventType"] == "InventoryRejected"
    assert "U4" in outcome["reason"]


async def test_poison_goes_to_the_dead_letter_channel_with_the_envelope(broker: TestKafkaBroker) -> None:
    dlt = service.transport._publishers["order-events.DLT"]

    await broker.publish(b"\xffnot json", "order-events", key=b"bad")

    # failed messages are handed to the DLT in the background, after the batch's commit
    await eventually(lambda: asyncio.sleep(0, dlt.mock.call_count), lambda calls: calls > 0, timeout=5)
    dlt.mock.assert_called_once()
    assert dlt.mock.call_args.args[0] == b"\xffnot json"
