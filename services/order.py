"""Order service: accepts orders over HTTP and follows each one through the saga.

`POST /orders` stores the order and its `OrderCreated` in one transaction (outbox),
so it answers 202 even while the broker is down. The order's status then follows
inventory and payment events: PENDING → RESERVED → CONFIRMED, PENDING → REJECTED,
RESERVED → CANCELLED. Inventory and payment events arrive on different channels, in any
order: a payment outcome handled before the reservation is kept with the order and applied
when the reservation arrives (PENDING → CONFIRMED or CANCELLED at once). A payment for an order
that was rejected, or is unknown, is impossible: ignored, logged and counted. Status only ever
moves forward, so repeated events are harmless; each move is one conditional UPDATE, so
concurrent moves (two replicas, two subscriptions) cannot move it back either.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import HTTPException, Path
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from config import Settings, get_settings
from services.events import (
    INVENTORY_EVENTS,
    ORDER_EVENTS,
    PAYMENT_EVENTS,
    InventoryEvent,
    InventoryRejected,
    InventoryReserved,
    Model,
    OrderCreated,
    OrderId,
    OrderItem,
    PaymentEvent,
    PaymentFailed,
    PaymentProcessed,
    items_of_product_ids,
)
from services.runtime import Service, ServiceApp, default_attribute, table_name
from services.store import Tx

log = logging.getLogger("switchboard.order")

NAME = "order"
ORDERS = table_name(NAME, "orders")
SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {ORDERS} (order_id TEXT PRIMARY KEY, user_id TEXT, items TEXT NOT NULL,"
    " status TEXT NOT NULL, reason TEXT, fingerprint TEXT NOT NULL, payment TEXT, payment_reason TEXT)",
    f"ALTER TABLE {ORDERS} ADD COLUMN IF NOT EXISTS payment TEXT",
    f"ALTER TABLE {ORDERS} ADD COLUMN IF NOT EXISTS payment_reason TEXT",
]

PLACE_JOIN_WINDOW_S = 0.001
"""POSTs wait this long for concurrent ones to share their SQLite COMMIT: at moderate rates
they arrive a few hundred microseconds apart, rarely in one event-loop turn, and each paid for
a transaction and a relay round of its own."""


class PlaceOrder(Model):
    """The seed's `{orderId, productId, quantity}`, or `{orderId?, userId?, items: [...]}` whose
    items are `{productId, quantity}` objects or product ids (quantity 1, the tutorial's shape)."""

    model_config = ConfigDict(
        strict=True,  # JSON types as declared: no "2" or 1.5 for a quantity (OrderItem), no 7 for a userId
        json_schema_extra={
            "examples": [
                {"orderId": "1001", "productId": "P123", "quantity": 2},
                {"userId": "u-42", "items": [{"productId": "P123", "quantity": 2}]},
            ]
        },
    )

    order_id: OrderId | None = None
    user_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    items: list[OrderItem] = Field(min_length=1, max_length=100)

    @model_validator(mode="before")
    @classmethod
    def _seed_shape(cls, data: Any) -> Any:
        if isinstance(data, dict) and "items" not in data and ("productId" in data or "quantity" in data):
            rest = {k: v for k, v in data.items() if k not in ("productId", "quantity")}
            return {**rest, "items": [{"productId": data.get("productId"), "quantity": data.get("quantity")}]}
        if isinstance(data, dict) and "items" in data:
            return {**data, "items": items_of_product_ids(data["items"])}
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, core: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """Both shapes `_seed_shape` accepts, so that the OpenAPI document admits exactly what the route
        does: `items` (objects or product ids), or the seed's `productId` and `quantity` without `items`."""
        schema = handler.resolve_ref_schema(handler(core))
        fields = schema.pop("properties")
        item_ref = fields["items"]["items"]
        item = handler.resolve_ref_schema(item_ref)["properties"]
        fields["items"]["items"] = {"anyOf": [item_ref, item["productId"]]}
        common = {"orderId": fields["orderId"], "userId": fields["userId"]}
        schema.pop("required", None)
        schema["anyOf"] = [
            {"type": "object", "properties": {**common, "items": fields["items"]}, "required": ["items"]},
            {
                "type": "object",
                "properties": {**common, "productId": item["productId"], "quantity": item["quantity"]},
                "required": ["productId", "quantity"],
                "not": {"required": ["items"]},
            },
        ]
        return schema

    def fingerprint(self) -> str:
        items = sorted((i.product_id, i.quantity) for i in self.items)
        return json.dumps({"userId": self.user_id, "items": items}, sort_keys=True)


class OrderAccepted(Model):
    order_id: str
    status: str


class OrderView(Model):
    order_id: str
    status: str
    user_id: str | None = None
    items: list[OrderItem]
    reason: str | None = None


class Conflict(Exception):
    pass


def _advance(tx: Tx, order_id: str, status: str, reason: str | None, *, from_: Sequence[str]) -> bool:
    """Move the order from one of `from_` to `status`; True if it moved. One statement:
    PostgreSQL (READ COMMITTED) re-checks the WHERE on a row a concurrent move just committed,
    so the later of two moves can never overwrite a higher status."""
    marks = ",".join("?" * len(from_))
    changed = tx.execute(
        f"UPDATE {ORDERS} SET status = ?, reason = ? WHERE order_id = ? AND status IN ({marks})",
        (status, reason, order_id, *from_),
    )
    return changed == 1


def _reserve(tx: Tx, order_id: str) -> str | None:
    """PENDING → RESERVED, or straight to a payment outcome that came first; the status reached."""
    changed = tx.execute(
        f"UPDATE {ORDERS} SET status = CASE payment WHEN 'PaymentProcessed' THEN 'CONFIRMED'"
        " WHEN 'PaymentFailed' THEN 'CANCELLED' ELSE 'RESERVED' END,"
        " reason = CASE WHEN payment IS NULL THEN reason ELSE payment_reason END"
        " WHERE order_id = ? AND status = 'PENDING'",
        (order_id,),
    )
    row = tx.fetchone(f"SELECT status FROM {ORDERS} WHERE order_id = ?", (order_id,)) if changed else None
    return str(row[0]) if row else None


def _reject(tx: Tx, order_id: str, reason: str) -> tuple[bool, bool]:
    """PENDING → REJECTED: (moved, whether a payment had come for the order, which is impossible)."""
    if not _advance(tx, order_id, "REJECTED", reason, from_=("PENDING",)):
        return False, False
    row = tx.fetchone(f"SELECT payment FROM {ORDERS} WHERE order_id = ?", (order_id,))
    return True, bool(row and row[0])


MOVED, KEPT, REPEATED, IMPOSSIBLE = "moved", "kept", "repeated", "impossible"
PAYMENT_ATTEMPTS = 3


def _pay(tx: Tx, order_id: str, event_type: str, status: str, reason: str | None) -> str:
    """A payment outcome: RESERVED → `status` (MOVED); kept for a PENDING order until its
    reservation arrives (KEPT); REPEATED for an order already paid; IMPOSSIBLE for an unknown or
    rejected order. Retried when another replica reserves the order between the statements."""
    for _ in range(PAYMENT_ATTEMPTS):
        if _advance(tx, order_id, status, reason, from_=("RESERVED",)):
            return MOVED
        kept = tx.execute(
            f"UPDATE {ORDERS} SET payment = ?, payment_reason = ?"
            " WHERE order_id = ? AND status = 'PENDING' AND payment IS NULL",
            (event_type, reason, order_id),
        )
        if kept:
            return KEPT
        row = tx.fetchone(f"SELECT status, payment FROM {ORDERS} WHERE order_id = ?", (order_id,))
        if row is None or row[0] == "REJECTED":
            return IMPOSSIBLE
        if row[0] != "RESERVED":  # paid already (CONFIRMED, CANCELLED, or kept while PENDING)
            return REPEATED
    return REPEATED


class Orders:
    """The order service's routes and handlers, bound to one `Service` (`create`)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.count_created = service.counter("orders_created", "Orders accepted (an idempotent repeat is not counted).")
        self.count_status = service.counter(
            "order_status_changes", "Order status transitions, by the status reached.", "status"
        )
        self.count_impossible = service.counter(
            "saga_impossible_events", "Events impossible for the order's state (ignored), by event type.", "event"
        )

    @classmethod
    def create(cls, settings: Settings | None = None) -> Orders:
        """A new order service from `settings` (None: `get_settings()`), every route and handler registered."""
        service = Service(
            NAME,
            title="Order service",
            description="Accepts orders and tracks their status.",
            settings=settings or get_settings(),
        )
        service.schema += SCHEMA
        orders = cls(service)
        orders._register()
        return orders

    def _register(self) -> None:
        service = self.service
        service.api.post(
            "/orders",
            status_code=202,
            response_model=OrderAccepted,
            response_model_by_alias=True,
            responses={
                409: {"description": "orderId exists with a different body"},
                413: {"description": "body over 64 KiB"},
                422: {"description": "invalid body; `errors[].field` names the failing field"},
            },
        )(self.place_order)
        service.api.get(
            "/orders/{order_id}",
            response_model=OrderView,
            response_model_by_alias=True,
            responses={404: {"description": "unknown order"}},
        )(self.get_order)
        service.subscribe(
            INVENTORY_EVENTS, self.track_inventory, InventoryEvent, "Moves orders to RESERVED or REJECTED."
        )
        service.subscribe(PAYMENT_EVENTS, self.track_payment, PaymentEvent, "Moves orders to CONFIRMED or CANCELLED.")
        service.publishes(ORDER_EVENTS, OrderCreated, "One OrderCreated per accepted order, keyed by orderId.")

    # --- HTTP ----------------------------------------------------------------------
    def place(self, tx: Tx, order_id: str, order: PlaceOrder) -> bool:
        """Insert the order and its event; False if the same order exists already, Conflict if another does."""
        row = tx.fetchone(f"SELECT fingerprint FROM {ORDERS} WHERE order_id = ?", (order_id,))
        if row is not None:
            if row[0] != order.fingerprint():
                raise Conflict(order_id)
            return False
        items_json = json.dumps([i.model_dump(by_alias=True) for i in order.items])
        tx.execute(
            f"INSERT INTO {ORDERS} (order_id, user_id, items, status, fingerprint) VALUES (?, ?, ?, 'PENDING', ?)",
            (order_id, order.user_id, items_json, order.fingerprint()),
        )
        event = OrderCreated(order_id=order_id, user_id=order.user_id, items=order.items)
        if self.service.settings.order_events_flat_fields:  # for consumers of the seed's flat OrderEvent
            event = event.with_flat_fields()
        self.service.outbox.add(tx, ORDER_EVENTS, event)
        return True

    async def place_order(self, order: PlaceOrder) -> JSONResponse:
        """Accept an order (202); the same orderId with the same body returns the same order."""
        order_id = order.order_id or str(uuid.uuid4())
        try:
            created = await self.service.db.transaction(
                lambda tx: self.place(tx, order_id, order), join_window_s=PLACE_JOIN_WINDOW_S
            )
        except Conflict:
            raise HTTPException(status_code=409, detail=f"order {order_id} exists with a different body") from None
        if created:
            self.count_created()
            log.info("order %s accepted", order_id)
            self.service.outbox.notify()
        body = OrderAccepted(order_id=order_id, status="PENDING").model_dump(by_alias=True)
        return JSONResponse(body, status_code=202, headers={} if created else {"Idempotent-Replayed": "true"})

    async def get_order(self, order_id: Annotated[str, Path(min_length=1, max_length=64)]) -> OrderView:
        row = await self.service.db.transaction(
            lambda tx: tx.fetchone(
                f"SELECT order_id, status, user_id, items, reason FROM {ORDERS} WHERE order_id = ?", (order_id,)
            )
        )
        if row is None:
            raise HTTPException(status_code=404, detail=f"unknown order {order_id}")
        return OrderView(order_id=row[0], status=row[1], user_id=row[2], items=json.loads(row[3]), reason=row[4])

    # --- saga ----------------------------------------------------------------------
    def _moved(self, order_id: str, status: str | None, reason: str | None = None) -> None:
        if status is not None:
            self.count_status(status=status)
            log.info("order %s → %s%s", order_id, status, f" ({reason})" if reason else "")

    def _impossible(self, event: Any, why: str) -> None:
        self.count_impossible(event=event.event_type)
        log.warning("ignoring %s for order %s: %s", event.event_type, event.order_id, why)

    async def track_inventory(self, event: InventoryReserved | InventoryRejected | Any) -> None:
        """Move the order to RESERVED (or to the payment outcome that came first) or REJECTED."""
        db = self.service.db
        if isinstance(event, InventoryReserved):
            self._moved(event.order_id, await db.transaction(lambda tx: _reserve(tx, event.order_id)))
        elif isinstance(event, InventoryRejected):
            moved, paid = await db.transaction(lambda tx: _reject(tx, event.order_id, event.reason))
            self._moved(event.order_id, "REJECTED" if moved else None, event.reason)
            if paid:
                self._impossible(event, "a payment had come for this order, which was never reserved")

    async def track_payment(self, event: PaymentProcessed | PaymentFailed) -> None:
        """Move a reserved order to CONFIRMED or CANCELLED; keep the outcome of one not reserved yet."""
        status, reason = ("CONFIRMED", None) if isinstance(event, PaymentProcessed) else ("CANCELLED", event.reason)
        outcome = await self.service.db.transaction(
            lambda tx: _pay(tx, event.order_id, event.event_type, status, reason)
        )
        if outcome == MOVED:
            self._moved(event.order_id, status, reason)
        elif outcome == KEPT:
            log.info("order %s: %s kept until its stock is reserved", event.order_id, event.event_type)
        elif outcome == IMPOSSIBLE:
            self._impossible(event, "the order is unknown or was rejected, so it was never reserved")


def create_service(settings: Settings | None = None) -> Service:
    """A new, independent order service from `settings` (None: `get_settings()`)."""
    return Orders.create(settings).service


def create_app(settings: Settings | None = None) -> ServiceApp:
    """The app of a new order service (`create_service`)."""
    return create_service(settings).app


service: Service
"""The process's order service, from `get_settings()`: built at first use (`__getattr__`)."""
app: ServiceApp
"""`faststream run services.order:app`: `service.app`."""


def __getattr__(name: str) -> Any:
    return default_attribute(__name__, name, create_service)
