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

from config import Settings, get_settings
from services.events import (
    INVENTORY_EVENTS,
    PAYMENT_EVENTS,
    InventoryEvent,
    InventoryReserved,
    PaymentEvent,
    PaymentFailed,
    PaymentProcessed,
)
from services.runtime import Service, ServiceApp, default_attribute, table_name
from services.store import Tx

log = logging.getLogger("switchboard.payment")

NAME = "payment"
UNIT_PRICE = 10.0
CHARGED = table_name(NAME, "charged")
SCHEMA = [f"CREATE TABLE IF NOT EXISTS {CHARGED} (key TEXT PRIMARY KEY)"]


class Payments:
    """The payment service's handler, bound to one `Service` (`create`)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.count_payments = service.counter("payments", "Payment outcomes, by result.", "result")

    @classmethod
    def create(cls, settings: Settings | None = None) -> Payments:
        """A new payment service from `settings` (None: `get_settings()`), its handler registered."""
        service = Service(
            NAME,
            title="Payment service",
            description="Charges orders whose stock is reserved.",
            settings=settings or get_settings(),
        )
        service.schema += SCHEMA
        payments = cls(service)
        service.subscribe(
            INVENTORY_EVENTS, payments.charge_order, InventoryEvent, "Charges each order whose stock was reserved."
        )
        service.publishes(PAYMENT_EVENTS, PaymentEvent, "Outcome of each payment.")
        return payments

    def _charge(self, tx: Tx, event: InventoryReserved) -> PaymentProcessed | PaymentFailed | None:
        if not tx.first_time(CHARGED, event.order_id):
            return None
        prefix = self.service.settings.payment_decline_user_prefix
        outcome: PaymentProcessed | PaymentFailed
        if prefix and (event.user_id or "").startswith(prefix):
            outcome = PaymentFailed(order_id=event.order_id, reason=f"payment declined for user {event.user_id}")
        else:
            amount = UNIT_PRICE * sum(item.quantity for item in event.items)
            outcome = PaymentProcessed(order_id=event.order_id, amount=amount)
        self.service.outbox.add(tx, PAYMENT_EVENTS, outcome)
        return outcome

    async def charge_order(self, event: InventoryReserved | Any) -> None:
        """Charge an order once its stock is reserved (at most once per order)."""
        if not isinstance(event, InventoryReserved):
            return
        outcome = await self.service.db.transaction(lambda tx: self._charge(tx, event))
        if outcome is not None:
            self.count_payments(result=outcome.event_type)
            log.info("order %s: %s", event.order_id, outcome.event_type)
            self.service.outbox.notify()


def create_service(settings: Settings | None = None) -> Service:
    """A new, independent payment service from `settings` (None: `get_settings()`)."""
    return Payments.create(settings).service


def create_app(settings: Settings | None = None) -> ServiceApp:
    """The app of a new payment service (`create_service`)."""
    return create_service(settings).app


service: Service
"""The process's payment service, from `get_settings()`: built at first use (`__getattr__`)."""
app: ServiceApp
"""`faststream run services.payment:app`: `service.app`."""


def __getattr__(name: str) -> Any:
    return default_attribute(__name__, name, create_service)
