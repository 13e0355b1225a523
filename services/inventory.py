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
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request
from pydantic import ConfigDict, Field

from config import Settings, get_settings
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
from services.runtime import Service, ServiceApp, default_attribute, table_name
from services.store import Tx

log = logging.getLogger("switchboard.inventory")

NAME = "inventory"
STOCK = table_name(NAME, "stock")
RESERVATIONS = table_name(NAME, "reservations")
SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {STOCK} (product_id TEXT PRIMARY KEY, available INTEGER NOT NULL CHECK (available >= 0))",
    f"CREATE TABLE IF NOT EXISTS {RESERVATIONS} (order_id TEXT PRIMARY KEY, status TEXT NOT NULL, items TEXT NOT NULL)",
    # the seed tutorial's product, so its curl works on a fresh store; never overwrites
    f"INSERT INTO {STOCK} (product_id, available) VALUES ('P123', 10) ON CONFLICT DO NOTHING",
]


class DemoFailure(RuntimeError):
    """The seed's demo trigger: an order for a configured productId (default `FAIL`) always fails."""


class StockLevel(Model):
    product_id: ProductId
    available: int


class SetStock(Model):
    model_config = ConfigDict(strict=True)  # `available` is a JSON integer: not true, 1.5 or "2"

    available: JsonInteger = Field(ge=0, le=1_000_000_000)


ProductPath = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]


class Inventory:
    """The inventory service's routes and handlers, bound to one `Service` (`create`)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.count_reservations = service.counter("reservations", "Reservation decisions, by result.", "result")
        self.count_releases = service.counter(
            "reservations_released", "Reservations given back after a failed payment."
        )
        self._lock_suffix = " FOR UPDATE" if service.db.dialect == "postgresql" else ""

    @classmethod
    def create(cls, settings: Settings | None = None) -> Inventory:
        """A new inventory service from `settings` (None: `get_settings()`), every route and handler registered."""
        service = Service(
            NAME,
            title="Inventory service",
            description="Stock levels and reservations for orders.",
            settings=settings or get_settings(),
        )
        service.schema += SCHEMA
        inventory = cls(service)
        inventory._register()
        return inventory

    def _register(self) -> None:
        service = self.service
        service.subscribe(ORDER_EVENTS, self.reserve_stock, OrderCreated, "Reserves stock for each new order.")
        service.subscribe(
            PAYMENT_EVENTS, self.release_stock, PaymentEvent, "Releases the reservation of orders whose payment failed."
        )
        service.publishes(
            INVENTORY_EVENTS, InventoryEvent, "Outcome of each reservation: reserved, rejected or released."
        )
        service.api.get(
            "/inventory/{product_id}",
            response_model=StockLevel,
            response_model_by_alias=True,
            responses={404: {"description": "unknown product"}},
        )(self.get_stock)
        service.api.put(
            "/inventory/{product_id}",
            response_model=StockLevel,
            response_model_by_alias=True,
            # 401/403 in the OpenAPI document: runtime.declare_error_answers
            dependencies=[Depends(service.require_admin)],
        )(self.set_stock)

    # --- reservations --------------------------------------------------------------
    def _shortfall(self, tx: Tx, wanted: Counter[str]) -> str | None:
        """Why the order cannot be served, or None if every item is available."""
        for product_id, quantity in sorted(wanted.items()):
            row = tx.fetchone(f"SELECT available FROM {STOCK} WHERE product_id = ?{self._lock_suffix}", (product_id,))
            if row is None:
                return f"unknown product {product_id}"
            if row[0] < quantity:
                return f"insufficient stock for {product_id}: requested {quantity}, available {row[0]}"
        return None

    def _decide(self, tx: Tx, event: OrderCreated) -> str | None:
        """Reserve all items or none, once per order; returns the new status or None if already decided."""
        if tx.fetchone(f"SELECT status FROM {RESERVATIONS} WHERE order_id = ?", (event.order_id,)):
            return None
        wanted: Counter[str] = Counter()
        for item in event.items:
            wanted[item.product_id] += item.quantity
        items_json = json.dumps([{"productId": p, "quantity": q} for p, q in sorted(wanted.items())])
        reason = self._shortfall(tx, wanted)
        outbox = self.service.outbox
        if reason is not None:
            tx.execute(
                f"INSERT INTO {RESERVATIONS} (order_id, status, items) VALUES (?, 'REJECTED', ?)",
                (event.order_id, items_json),
            )
            outbox.add(tx, INVENTORY_EVENTS, InventoryRejected(order_id=event.order_id, reason=reason))
            return "REJECTED"
        for product_id, quantity in wanted.items():
            tx.execute(f"UPDATE {STOCK} SET available = available - ? WHERE product_id = ?", (quantity, product_id))
        tx.execute(
            f"INSERT INTO {RESERVATIONS} (order_id, status, items) VALUES (?, 'RESERVED', ?)",
            (event.order_id, items_json),
        )
        reserved = [OrderItem(product_id=p, quantity=q) for p, q in sorted(wanted.items())]
        outbox.add(
            tx, INVENTORY_EVENTS, InventoryReserved(order_id=event.order_id, user_id=event.user_id, items=reserved)
        )
        return "RESERVED"

    async def reserve_stock(self, event: OrderCreated) -> None:
        """Reserve the order's stock and publish the outcome."""
        log.debug("InventoryService received order: %s", event.order_id)  # the transport logs each outcome
        failing = self.service.settings.failing_products.intersection(item.product_id for item in event.items)
        if failing:
            raise DemoFailure(f"demo failure for product(s) {', '.join(sorted(failing))} in order {event.order_id}")
        status = await self.service.db.transaction(lambda tx: self._decide(tx, event))
        if status is None:
            log.info("order %s already decided; duplicate delivery ignored", event.order_id)
            return
        self.count_reservations(result=status)
        log.debug("order %s %s (event %s)", event.order_id, status, event.event_id)
        self.service.outbox.notify()

    def _release(self, tx: Tx, order_id: str) -> list[OrderItem] | None:
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
        self.service.outbox.add(tx, INVENTORY_EVENTS, InventoryReleased(order_id=order_id, items=items))
        return items

    async def release_stock(self, event: PaymentProcessed | PaymentFailed) -> None:
        """Compensation: give back a reservation whose payment failed (at most once per order)."""
        if not isinstance(event, PaymentFailed):
            return
        released = await self.service.db.transaction(lambda tx: self._release(tx, event.order_id))
        if released is not None:
            self.count_releases()
            log.info("order %s: released %d item(s) after payment failure", event.order_id, len(released))
            self.service.outbox.notify()

    # --- HTTP ----------------------------------------------------------------------
    async def get_stock(self, product_id: ProductPath) -> StockLevel:
        row = await self.service.db.transaction(
            lambda tx: tx.fetchone(f"SELECT available FROM {STOCK} WHERE product_id = ?", (product_id,))
        )
        if row is None:
            raise HTTPException(status_code=404, detail=f"unknown product {product_id}")
        return StockLevel(product_id=product_id, available=row[0])

    async def set_stock(self, product_id: ProductPath, body: SetStock, request: Request) -> StockLevel:  # noqa: ARG002
        """Set the available stock of a product (admin: `Authorization: Bearer $ADMIN_TOKEN`)."""
        await self.service.db.transaction(
            lambda tx: tx.execute(
                f"INSERT INTO {STOCK} (product_id, available) VALUES (?, ?) "
                "ON CONFLICT (product_id) DO UPDATE SET available = excluded.available",
                (product_id, body.available),
            )
        )
        return StockLevel(product_id=product_id, available=body.available)


def create_service(settings: Settings | None = None) -> Service:
    """A new, independent inventory service from `settings` (None: `get_settings()`)."""
    return Inventory.create(settings).service


def create_app(settings: Settings | None = None) -> ServiceApp:
    """The app of a new inventory service (`create_service`)."""
    return create_service(settings).app


service: Service
"""The process's inventory service, from `get_settings()`: built at first use (`__getattr__`)."""
app: ServiceApp
"""`faststream run services.inventory:app`: `service.app`."""


def __getattr__(name: str) -> Any:
    return default_attribute(__name__, name, create_service)
