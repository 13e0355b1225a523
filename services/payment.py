"""Payment service: charges reserved orders.

Consumes `InventoryReserved` on `inventory-events`; publishes `PaymentProcessed` or
`PaymentFailed` on `payment-events` via its outbox, once per order.

Deterministic rule (for demos and tests): a payment is declined when the order's
`userId` starts with `PAYMENT_DECLINE_USER_PREFIX` (default `declined`); every other
order is charged `UNIT_PRICE` per item unit.
"""

from __future__ import annotations

import logging
from typing import Any

from services.events import (
    INVENTORY_EVENTS,
    PAYMENT_EVENTS,
    InventoryEvent,
    InventoryReserved,
    PaymentEvent,
    PaymentFailed,
    PaymentProcessed,
)
from services.runtime import Service
from services.store import Tx

log = logging.getLogger("switchboard.payment")

UNIT_PRICE = 10.0

service = Service("payment", title="Payment service", description="Charges orders whose stock is reserved.")
CHARGED = service.table("charged")
service.schema += [f"CREATE TABLE IF NOT EXISTS {CHARGED} (key TEXT PRIMARY KEY)"]


count_payments = service.counter("payments", "Payment outcomes, by result.", "result")


def _charge(tx: Tx, event: InventoryReserved) -> PaymentProcessed | PaymentFailed | None:
    if not tx.first_time(CHARGED, event.order_id):
        return None
    prefix = service.settings.payment_decline_user_prefix
    outcome: PaymentProcessed | PaymentFailed
    if prefix and (event.user_id or "").startswith(prefix):
        outcome = PaymentFailed(order_id=event.order_id, reason=f"payment declined for user {event.user_id}")
    else:
        amount = UNIT_PRICE * sum(item.quantity for item in event.items)
        outcome = PaymentProcessed(order_id=event.order_id, amount=amount)
    service.outbox.add(tx, PAYMENT_EVENTS, outcome)
    return outcome


async def charge_order(event: InventoryReserved | Any) -> None:
    """Charge an order once its stock is reserved (at most once per order)."""
    if not isinstance(event, InventoryReserved):
        return
    outcome = await service.db.transaction(lambda tx: _charge(tx, event))
    if outcome is not None:
        count_payments(result=outcome.event_type)
        log.info("order %s: %s", event.order_id, outcome.event_type)
        service.outbox.notify()


service.subscribe(INVENTORY_EVENTS, charge_order, InventoryEvent, "Charges each order whose stock was reserved.")
service.publishes(PAYMENT_EVENTS, PaymentEvent, "Outcome of each payment.")

app = service.app
