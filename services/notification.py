"""Notification service: one notification per order state change, and the DLT listener.

Consumes every event on `order-events`, `inventory-events` and `payment-events`,
records one notification per event (a redelivered event is recorded once), logs a
human-readable line, and serves them at `GET /notifications?orderId=`.

Like the seed's DLT listener it also sees every dead-lettered message of those
channels (without taking it off the DLT), logs `DLT received failed message: <body>`
(the first LOGGED_BODY_BYTES of it) and keeps it whole for inspection at the admin route
`GET /dead-letters?channel=&limit=`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Query

from brokers import H_BODY_REF, H_BODY_SIZE, DeadLetter
from config import Settings, get_settings
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
from services.runtime import Service, ServiceApp, default_attribute, table_name
from services.store import Tx

log = logging.getLogger("switchboard.notification")

NAME = "notification"
NOTIFICATIONS = table_name(NAME, "notifications")
DEAD_LETTERS = table_name(NAME, "dead_letters")
CHANNELS = (ORDER_EVENTS, INVENTORY_EVENTS, PAYMENT_EVENTS)
"""Contract channels whose events (and dead letters) this service sees."""


def schema(autoincrement_pk: str) -> list[str]:
    """The service's tables; `autoincrement_pk`: the store's (`Database.autoincrement_pk`)."""
    return [
        f"CREATE TABLE IF NOT EXISTS {DEAD_LETTERS} (id {autoincrement_pk}, channel TEXT NOT NULL,"
        " body TEXT NOT NULL, headers TEXT NOT NULL, received_at TEXT NOT NULL)",
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


class SeenDeadLetter(Model):
    channel: str
    body: str
    headers: dict[str, str]
    received_at: str


LOGGED_BODY_BYTES = 512
"""A dead letter's body is whatever a producer sent: the log shows at most this much of it."""


def loggable_body(body: bytes) -> str:
    """The body as logged: its first LOGGED_BODY_BYTES, and how much was cut."""
    if len(body) <= LOGGED_BODY_BYTES:
        return body.decode("utf-8", "replace")
    shown = body[:LOGGED_BODY_BYTES].decode("utf-8", "ignore")  # "ignore": a character cut in two
    return f"{shown} [cut: {len(body)} bytes, first {LOGGED_BODY_BYTES} shown]"


def _shown_body(letter: DeadLetter) -> str:
    """What the log shows of the body; a body kept apart (too large for the broker with its
    envelope, `brokers.fitting`) is named, `python -m brokers.dlt list` shows it."""
    ref = letter.headers.get(H_BODY_REF)
    if ref:
        return f"[body of {letter.headers.get(H_BODY_SIZE, '?')} bytes kept apart as {ref}]"
    return loggable_body(letter.body)


class Notifications:
    """The notification service's routes and handlers, bound to one `Service` (`create`)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    @classmethod
    def create(cls, settings: Settings | None = None) -> Notifications:
        """A new notification service from `settings` (None: `get_settings()`), every route and handler registered."""
        service = Service(
            NAME,
            title="Notification service",
            description="Tells users what happened to their orders.",
            settings=settings or get_settings(),
        )
        service.schema += schema(service.db.autoincrement_pk)
        notifications = cls(service)
        notifications._register()
        return notifications

    def _register(self) -> None:
        service = self.service
        service.subscribe(ORDER_EVENTS, self.notify, OrderCreated, "Notifies about new orders.")
        service.subscribe(INVENTORY_EVENTS, self.notify, InventoryEvent, "Notifies about reservations.")
        service.subscribe(PAYMENT_EVENTS, self.notify, PaymentEvent, "Notifies about payments.")
        for channel in CHANNELS:
            service.listen_dead_letters(channel, self.report_dead_letter)
        service.api.get(
            "/dead-letters",
            response_model=list[SeenDeadLetter],
            response_model_by_alias=True,
            dependencies=[Depends(service.require_admin)],  # bodies and headers of any producer's messages
        )(self.list_dead_letters)
        service.api.get("/notifications", response_model=list[Notification], response_model_by_alias=True)(
            self.list_notifications
        )

    async def notify(self, event: Any) -> None:
        """Record and log a notification for any order event (once per eventId)."""
        template = MESSAGES.get(event.event_type, "Order {order}: {type}.")
        message = template.format(order=event.order_id, reason=getattr(event, "reason", ""), type=event.event_type)
        if await self.service.db.transaction(lambda tx: _record(tx, event, message)):
            log.info("NotificationService: %s", message)

    async def report_dead_letter(self, letter: DeadLetter) -> None:
        """Log and keep a dead-lettered message (the seed's DLT listener)."""
        body = letter.body.decode("utf-8", "replace")
        log.warning("DLT received failed message: %s", _shown_body(letter))
        received_at = datetime.now(UTC).isoformat()
        await self.service.db.transaction(
            lambda tx: tx.execute(
                f"INSERT INTO {DEAD_LETTERS} (channel, body, headers, received_at) VALUES (?, ?, ?, ?)",
                (letter.channel, body, json.dumps(letter.headers), received_at),
            )
        )

    async def list_dead_letters(
        self,
        channel: Annotated[str | None, Query(description="e.g. order-events.DLT")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[SeenDeadLetter]:
        """The newest dead letters this listener saw, newest first (admin: `Authorization: Bearer $ADMIN_TOKEN`)."""
        where, params = ("WHERE channel = ?", [self.service.channel(channel)]) if channel else ("", [])
        rows = await self.service.db.transaction(
            lambda tx: tx.fetchall(
                f"SELECT channel, body, headers, received_at FROM {DEAD_LETTERS} {where} ORDER BY id DESC LIMIT ?",
                (*params, limit),
            )
        )
        return [SeenDeadLetter(channel=r[0], body=r[1], headers=json.loads(r[2]), received_at=r[3]) for r in rows]

    async def list_notifications(
        self, order_id: Annotated[str, Query(alias="orderId", min_length=1)]
    ) -> list[Notification]:
        rows = await self.service.db.transaction(
            lambda tx: tx.fetchall(
                f"SELECT order_id, event_type, message, occurred_at FROM {NOTIFICATIONS} WHERE order_id = ?"
                " ORDER BY occurred_at",
                (order_id,),
            )
        )
        return [Notification(order_id=r[0], event_type=r[1], message=r[2], occurred_at=r[3]) for r in rows]


def create_service(settings: Settings | None = None) -> Service:
    """A new, independent notification service from `settings` (None: `get_settings()`)."""
    return Notifications.create(settings).service


def create_app(settings: Settings | None = None) -> ServiceApp:
    """The app of a new notification service (`create_service`)."""
    return create_service(settings).app


service: Service
"""The process's notification service, from `get_settings()`: built at first use (`__getattr__`)."""
app: ServiceApp
"""`faststream run services.notification:app`: `service.app`."""


def __getattr__(name: str) -> Any:
    return default_attribute(__name__, name, create_service)
