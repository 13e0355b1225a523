"""Notification service: one notification per order state change.

Consumes every event on `order-events`, `inventory-events` and `payment-events`,
records one notification per event (a redelivered event is recorded once), logs a
human-readable line, and serves them at `GET /notifications?orderId=`.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Query

from services.events import (
    INVENTORY_EVENTS,
    ORDER_EVENTS,
    PAYMENT_EVENTS,
    Event,
    InventoryEvent,
    Model,
    OrderCreated,
    PaymentEvent,
)
from services.runtime import Service
from services.store import Tx

log = logging.getLogger("switchboard.notification")

service = Service(
    "notification", title="Notification service", description="Tells users what happened to their orders."
)
NOTIFICATIONS = service.table("notifications")
service.schema += [
    f"CREATE TABLE IF NOT EXISTS {NOTIFICATIONS} (event_id TEXT PRIMARY KEY,"
    " order_id TEXT NOT NULL, event_type TEXT NOT NULL, message TEXT NOT NULL, occurred_at TEXT NOT NULL)",
]

MESSAGES = {
    "OrderCreated": "Order {order} received.",
    "InventoryReserved": "Stock reserved for order {order}.",
    "InventoryRejected": "Order {order} rejected: {reason}.",
    "InventoryReleased": "Stock released for order {order}.",
    "PaymentProcessed": "Payment received for order {order}; it is confirmed.",
    "PaymentFailed": "Payment failed for order {order}: {reason}; it is cancelled.",
}


class Notification(Model):
    order_id: str
    event_type: str
    message: str
    occurred_at: str


def _record(tx: Tx, event: Event, message: str) -> bool:
    return (
        tx.execute(
            f"INSERT INTO {NOTIFICATIONS} (event_id, order_id, event_type, message, occurred_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (str(event.event_id), event.order_id, event.event_type, message, event.occurred_at.isoformat()),  # type: ignore[attr-defined]
        )
        == 1
    )


async def notify(event: Any) -> None:
    """Record and log a notification for any order event (once per eventId)."""
    template = MESSAGES.get(event.event_type, "Order {order}: {type}.")
    message = template.format(order=event.order_id, reason=getattr(event, "reason", ""), type=event.event_type)
    if await service.db.transaction(lambda tx: _record(tx, event, message)):
        log.info("NotificationService: %s", message)


service.subscribe(ORDER_EVENTS, notify, OrderCreated, "Notifies about new orders.")
service.subscribe(INVENTORY_EVENTS, notify, InventoryEvent, "Notifies about reservations.")
service.subscribe(PAYMENT_EVENTS, notify, PaymentEvent, "Notifies about payments.")


@service.api.get("/notifications", response_model=list[Notification], response_model_by_alias=True)
async def list_notifications(order_id: Annotated[str, Query(alias="orderId", min_length=1)]) -> list[Notification]:
    rows = await service.db.transaction(
        lambda tx: tx.fetchall(
            f"SELECT order_id, event_type, message, occurred_at FROM {NOTIFICATIONS} WHERE order_id = ? ORDER BY occurred_at",
            (order_id,),
        )
    )
    return [Notification(order_id=r[0], event_type=r[1], message=r[2], occurred_at=r[3]) for r in rows]


app = service.app
