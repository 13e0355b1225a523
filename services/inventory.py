"""Inventory service: reserves stock for orders, releases it when payment fails.

Consumes `OrderCreated` (and the seed's flat OrderEvent) on `order-events` and
`PaymentFailed` on `payment-events`; publishes `InventoryReserved`,
`InventoryRejected` and `InventoryReleased` on `inventory-events` via its outbox.

Guarantees: all items of an order are reserved or none; stock never goes below
zero under concurrent orders; a reservation is decided at most once per orderId
and released at most once, whatever the broker redelivers.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from pydantic import ConfigDict, Field

from services.events import (
    ID_PATTERN,
    INVENTORY_EVENTS,
    ORDER_EVENTS,
    PAYMENT_EVENTS,
    InventoryEvent,
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    JsonInteger,
    Model,
    OrderCreated,
    OrderItem,
    PaymentEvent,
    PaymentFailed,
    PaymentProcessed,
    ProductId,
)
from services.runtime import Service
from services.store import Tx

log = logging.getLogger("switchboard.inventory")

service = Service(
    "inventory",
    title="Inventory service",
    description="Stock levels and reservations for orders.",
)
STOCK = service.table("stock")
RESERVATIONS = service.table("reservations")
service.schema += [
    f"CREATE TABLE IF NOT EXISTS {STOCK} (product_id TEXT PRIMARY KEY, available INTEGER NOT NULL CHECK (available >= 0))",
    f"CREATE TABLE IF NOT EXISTS {RESERVATIONS} (order_id TEXT PRIMARY KEY, status TEXT NOT NULL, items TEXT NOT NULL)",
    # the seed tutorial's product, so its curl works on a fresh store; never overwrites
    f"INSERT INTO {STOCK} (product_id, available) VALUES ('P123', 10) ON CONFLICT DO NOTHING",
]


count_reservations = service.counter("reservations", "Reservation decisions, by result.", "result")
count_releases = service.counter("reservations_released", "Reservations given back after a failed payment.")


class DemoFailure(RuntimeError):
    """The seed's demo trigger: an order for a configured productId (default `FAIL`) always fails."""


class StockLevel(Model):
    product_id: ProductId
    available: int


class SetStock(Model):
    model_config = ConfigDict(strict=True)  # `available` is a JSON integer: not true, 1.5 or "2"

    available: JsonInteger = Field(ge=0, le=1_000_000_000)


def _lock_suffix() -> str:
    return " FOR UPDATE" if service.db.dialect == "postgresql" else ""


def _shortfall(tx: Tx, wanted: Counter[str]) -> str | None:
    """Why the order cannot be served, or None if every item is available."""
    for product_id, quantity in sorted(wanted.items()):
        row = tx.fetchone(f"SELECT available FROM {STOCK} WHERE product_id = ?{_lock_suffix()}", (product_id,))
        if row is None:
            return f"unknown product {product_id}"
        if row[0] < quantity:
            return f"insufficient stock for {product_id}: requested {quantity}, available {row[0]}"
    return None


def _decide(tx: Tx, event: OrderCreated) -> str | None:
    """Reserve all items or none, once per order; returns the new status or None if already decided."""
    if tx.fetchone(f"SELECT status FROM {RESERVATIONS} WHERE order_id = ?", (event.order_id,)):
        return None
    wanted: Counter[str] = Counter()
    for item in event.items:
        wanted[item.product_id] += item.quantity
    items_json = json.dumps([{"productId": p, "quantity": q} for p, q in sorted(wanted.items())])
    reason = _shortfall(tx, wanted)
    if reason is not None:
        tx.execute(
            f"INSERT INTO {RESERVATIONS} (order_id, status, items) VALUES (?, 'REJECTED', ?)",
            (event.order_id, items_json),
        )
        service.outbox.add(tx, INVENTORY_EVENTS, InventoryRejected(order_id=event.order_id, reason=reason))
        return "REJECTED"
    for product_id, quantity in wanted.items():
        tx.execute(f"UPDATE {STOCK} SET available = available - ? WHERE product_id = ?", (quantity, product_id))
    tx.execute(
        f"INSERT INTO {RESERVATIONS} (order_id, status, items) VALUES (?, 'RESERVED', ?)", (event.order_id, items_json)
    )
    reserved = [OrderItem(product_id=p, quantity=q) for p, q in sorted(wanted.items())]
    service.outbox.add(
        tx, INVENTORY_EVENTS, InventoryReserved(order_id=event.order_id, user_id=event.user_id, items=reserved)
    )
    return "RESERVED"


async def reserve_stock(event: OrderCreated) -> None:
    """Reserve the order's stock and publish the outcome."""
    log.debug("InventoryService received order: %s", event.order_id)  # the transport logs each outcome
    failing = service.settings.failing_products.intersection(item.product_id for item in event.items)
    if failing:
        raise DemoFailure(f"demo failure for product(s) {', '.join(sorted(failing))} in order {event.order_id}")
    status = await service.db.transaction(lambda tx: _decide(tx, event))
    if status is None:
        log.info("order %s already decided; duplicate delivery ignored", event.order_id)
        return
    count_reservations(result=status)
    log.debug("order %s %s (event %s)", event.order_id, status, event.event_id)
    service.outbox.notify()


def _release(tx: Tx, order_id: str) -> list[OrderItem] | None:
    changed = tx.execute(
        f"UPDATE {RESERVATIONS} SET status = 'RELEASED' WHERE order_id = ? AND status = 'RESERVED'", (order_id,)
    )
    if changed != 1:
        return None
    row = tx.fetchone(f"SELECT items FROM {RESERVATIONS} WHERE order_id = ?", (order_id,))
    items = [OrderItem.model_validate(i) for i in json.loads(row[0] if row else "[]")]
    for item in items:
        tx.execute(
            f"UPDATE {STOCK} SET available = available + ? WHERE product_id = ?", (item.quantity, item.product_id)
        )
    service.outbox.add(tx, INVENTORY_EVENTS, InventoryReleased(order_id=order_id, items=items))
    return items


async def release_stock(event: PaymentProcessed | PaymentFailed) -> None:
    """Compensation: give back a reservation whose payment failed (at most once per order)."""
    if not isinstance(event, PaymentFailed):
        return
    released = await service.db.transaction(lambda tx: _release(tx, event.order_id))
    if released is not None:
        count_releases()
        log.info("order %s: released %d item(s) after payment failure", event.order_id, len(released))
        service.outbox.notify()


service.subscribe(ORDER_EVENTS, reserve_stock, OrderCreated, "Reserves stock for each new order.")
service.subscribe(
    PAYMENT_EVENTS, release_stock, PaymentEvent, "Releases the reservation of orders whose payment failed."
)
service.publishes(INVENTORY_EVENTS, InventoryEvent, "Outcome of each reservation: reserved, rejected or released.")


async def _read_stock(product_id: str) -> StockLevel:
    row = await service.db.transaction(
        lambda tx: tx.fetchone(f"SELECT available FROM {STOCK} WHERE product_id = ?", (product_id,))
    )
    if row is None:
        raise HTTPException(status_code=404, detail=f"unknown product {product_id}")
    return StockLevel(product_id=product_id, available=row[0])


ProductPath = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]


@service.api.get(
    "/inventory/{product_id}",
    response_model=StockLevel,
    response_model_by_alias=True,
    responses={404: {"description": "unknown product"}},
)
async def get_stock(product_id: ProductPath) -> StockLevel:
    return await _read_stock(product_id)


@service.api.put(
    "/inventory/{product_id}",
    response_model=StockLevel,
    response_model_by_alias=True,
    dependencies=[Depends(service.require_admin)],  # 401/403 in the OpenAPI document: runtime.declare_error_answers
)
async def set_stock(product_id: ProductPath, body: SetStock, request: Request) -> StockLevel:  # noqa: ARG001
    """Set the available stock of a product (admin: `Authorization: Bearer $ADMIN_TOKEN`)."""
    await service.db.transaction(
        lambda tx: tx.execute(
            f"INSERT INTO {STOCK} (product_id, available) VALUES (?, ?) "
            "ON CONFLICT (product_id) DO UPDATE SET available = excluded.available",
            (product_id, body.available),
        )
    )
    return StockLevel(product_id=product_id, available=body.available)


app = service.app
