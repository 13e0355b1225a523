"""The events of docs/contract.md, as pydantic models (JSON field names in camelCase).

Every event carries `eventType`, `eventId` (UUID), `schemaVersion`, `occurredAt`
(RFC 3339) and `orderId`. Consumers validate bodies into these models; a body that
does not validate is poison and goes to the dead-letter channel at once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4, uuid5

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

ORDER_EVENTS = "order-events"
INVENTORY_EVENTS = "inventory-events"
PAYMENT_EVENTS = "payment-events"

ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
"""orderId and productId: letters, digits and `. _ : -` (nothing that could break a log line)."""
ProductId = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN, examples=["P123"])]
OrderId = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN, examples=["1001"])]


def _integral(value: Any) -> Any:
    """A JSON number without a fractional part (`2.0`) as the int it equals."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInteger = Annotated[int, BeforeValidator(_integral), Field(strict=True)]
"""An integer field: a JSON number without a fractional part (`2` or `2.0`: JSON Schema's `integer`,
which the OpenAPI and AsyncAPI documents declare); `true`, `1.5` and `"2"` are refused."""


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class OrderItem(Model):
    product_id: ProductId
    quantity: JsonInteger = Field(gt=0, le=1_000_000, examples=[2])


def items_of_product_ids(items: Any) -> Any:
    """The tutorial's conceptual `items: ["itemA", "itemB"]`: each string a product, quantity 1."""
    if isinstance(items, list) and any(isinstance(item, str) for item in items):
        return [{"productId": item, "quantity": 1} if isinstance(item, str) else item for item in items]
    return items


FOREIGN_EVENT_IDS = UUID("5b7e0f0e-6d1c-4f43-9a1e-8c3c1f0a2d61")
"""uuid5 namespace of the eventId given to a foreign OrderCreated that carries none."""


def foreign_event_id(body: dict[str, Any]) -> str:
    """A stable eventId for a body without one: the same bytes get the same id on every delivery,
    so the log lines, spans and dead letter of one message match (uuid5 of the sorted JSON)."""
    return str(uuid5(FOREIGN_EVENT_IDS, json.dumps(body, sort_keys=True, default=str)))


class Event(Model):
    event_id: UUID = Field(default_factory=uuid4)
    schema_version: int = 1
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    order_id: OrderId


class OrderCreated(Event):
    """An order was accepted and waits for stock. Also accepts, as schema version 0, the seed's
    flat `{"orderId", "productId", "quantity"}` and the tutorial's `items: ["itemA", ...]` (each
    string a product, quantity 1). A body without `eventId` gets `foreign_event_id(body)`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "eventType": "OrderCreated",
                    "eventId": "6f1c8f7e-3a57-4d2b-9a54-0c1b9d3f7e21",
                    "schemaVersion": 1,
                    "occurredAt": "2026-11-27T10:00:00Z",
                    "orderId": "1001",
                    "userId": "u-42",
                    "items": [{"productId": "P123", "quantity": 2}],
                }
            ]
        }
    )

    event_type: Literal["OrderCreated"] = "OrderCreated"
    user_id: str | None = None
    items: list[OrderItem] = Field(min_length=1, max_length=100)
    product_id: ProductId | None = Field(
        None,
        description="Compatibility field (ORDER_EVENTS_FLAT_FIELDS): the productId of the only item, for consumers "
        "of the seed's flat OrderEvent; absent otherwise. When present it must equal items[0].productId.",
    )
    quantity: JsonInteger | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="Compatibility field (ORDER_EVENTS_FLAT_FIELDS): the quantity of the only item; absent "
        "otherwise. When present it must equal items[0].quantity.",
    )

    def with_flat_fields(self) -> OrderCreated:
        """This event carrying top-level `productId` and `quantity` when it has exactly one item."""
        if len(self.items) != 1:
            return self
        item = self.items[0]
        return self.model_copy(update={"product_id": item.product_id, "quantity": item.quantity})

    @model_validator(mode="after")
    def _flat_fields_match_item(self) -> OrderCreated:
        """Top-level productId/quantity copy the single item: anything else is ambiguous (which one
        would a flat-OrderEvent consumer act on?), so the event is invalid (poison)."""
        flat = {"productId": self.product_id, "quantity": self.quantity}
        present = {k: v for k, v in flat.items() if v is not None}
        if not present:
            return self
        if len(self.items) != 1:
            raise ValueError(f"top-level {', '.join(present)} is only allowed with exactly one item")
        item = {"productId": self.items[0].product_id, "quantity": self.items[0].quantity}
        for name, value in present.items():
            if item[name] != value:
                raise ValueError(f"top-level {name} {value!r} differs from the item's {item[name]!r}")
        return self

    def to_json_bytes(self) -> bytes:
        """The compatibility fields are written only when set, never as null."""
        absent = {name for name in ("product_id", "quantity") if getattr(self, name) is None}
        return self.model_dump_json(by_alias=True, exclude=absent).encode()

    @model_validator(mode="before")
    @classmethod
    def _upgrade_foreign_shapes(cls, data: Any) -> Any:
        """Foreign bodies use the JSON names (`orderId`); events built in code use field names.
        Ours (an `eventId`, item objects) pass through untouched: this runs for every message."""
        if not isinstance(data, dict) or "orderId" not in data:
            return data
        items = data.get("items")
        flat = items is None and "productId" in data
        by_id = items_of_product_ids(items) if not flat else items
        if "eventId" in data and not flat and by_id is items:
            return data
        upgraded = dict(data)
        upgraded.setdefault("eventId", foreign_event_id(data))
        upgraded.setdefault("eventType", "OrderCreated")
        if flat:
            del upgraded["productId"]
            upgraded.pop("quantity", None)
            upgraded["items"] = [{"productId": data["productId"], "quantity": data.get("quantity")}]
        elif by_id is not items:
            upgraded["items"] = by_id
        if flat or by_id is not items:
            upgraded.setdefault("schemaVersion", 0)
        return upgraded


class InventoryReserved(Event):
    """All items of the order are reserved."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "eventType": "InventoryReserved",
                    "eventId": "0b6e3c1a-8d4f-4a55-b1c2-7e9f2d4a6b10",
                    "schemaVersion": 1,
                    "occurredAt": "2026-11-27T10:00:01Z",
                    "orderId": "1001",
                    "userId": "u-42",
                    "items": [{"productId": "P123", "quantity": 2}],
                }
            ]
        }
    )

    event_type: Literal["InventoryReserved"] = "InventoryReserved"
    user_id: str | None = None
    items: list[OrderItem]


class InventoryRejected(Event):
    """The order cannot be served (no stock, unknown product); nothing was reserved."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "eventType": "InventoryRejected",
                    "eventId": "5d2a7f90-1c3b-4e8d-9f6a-2b4c6d8e0f12",
                    "schemaVersion": 1,
                    "occurredAt": "2026-11-27T10:00:01Z",
                    "orderId": "1002",
                    "reason": "insufficient stock for P123: requested 20, available 8",
                }
            ]
        }
    )

    event_type: Literal["InventoryRejected"] = "InventoryRejected"
    reason: str


class InventoryReleased(Event):
    """A reservation was given back (compensation after a failed payment)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "eventType": "InventoryReleased",
                    "eventId": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                    "schemaVersion": 1,
                    "occurredAt": "2026-11-27T10:00:03Z",
                    "orderId": "1003",
                    "items": [{"productId": "P123", "quantity": 2}],
                }
            ]
        }
    )

    event_type: Literal["InventoryReleased"] = "InventoryReleased"
    items: list[OrderItem] = Field(default_factory=list)


class PaymentProcessed(Event):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "eventType": "PaymentProcessed",
                    "eventId": "c4d5e6f7-a8b9-4c0d-8e1f-2a3b4c5d6e7f",
                    "schemaVersion": 1,
                    "occurredAt": "2026-11-27T10:00:02Z",
                    "orderId": "1001",
                    "amount": 20.0,
                }
            ]
        }
    )

    event_type: Literal["PaymentProcessed"] = "PaymentProcessed"
    amount: float = 0.0


class PaymentFailed(Event):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "eventType": "PaymentFailed",
                    "eventId": "e1f2a3b4-c5d6-4e7f-9a0b-1c2d3e4f5a6b",
                    "schemaVersion": 1,
                    "occurredAt": "2026-11-27T10:00:02Z",
                    "orderId": "1003",
                    "reason": "payment declined for user declined-7",
                }
            ]
        }
    )

    event_type: Literal["PaymentFailed"] = "PaymentFailed"
    reason: str


InventoryEvent = Annotated[InventoryReserved | InventoryRejected | InventoryReleased, Field(discriminator="event_type")]
PaymentEvent = Annotated[PaymentProcessed | PaymentFailed, Field(discriminator="event_type")]

CONSUMERS: dict[str, tuple[str, ...]] = {
    ORDER_EVENTS: ("inventory", "notification"),
    INVENTORY_EVENTS: ("order", "payment", "notification"),
    PAYMENT_EVENTS: ("order", "inventory", "notification"),
}
"""Which services consume each channel (their consumer names: `Settings.consumer_name`): a publisher
reports its consumers' lag, so the gauge stays visible while a consumer is down (when it matters most)."""

CHANNEL_EVENTS: dict[str, Any] = {
    ORDER_EVENTS: OrderCreated,
    INVENTORY_EVENTS: InventoryEvent,
    PAYMENT_EVENTS: PaymentEvent,
}
