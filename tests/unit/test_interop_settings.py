"""CONSUMER_NAMES and ORDER_EVENTS_FLAT_FIELDS: parsing, validation and the OrderCreated shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from config.settings import Settings
from services.events import OrderCreated

EVENT_ID = "6f1c8f7e-3a57-4d2b-9a54-0c1b9d3f7e21"


def test_consumer_names_default_to_service_name() -> None:
    settings = Settings(consumer_names="")
    assert [settings.consumer_name(s) for s in ("order", "inventory", "payment", "notification")] == [
        "order-service",
        "inventory-service",
        "payment-service",
        "notification-service",
    ]


def test_consumer_names_map_only_the_named_services() -> None:
    settings = Settings(consumer_names=" inventory = inventory-group ,payment=payments,")
    assert settings.consumer_name("inventory") == "inventory-group"
    assert settings.consumer_name("payment") == "payments"
    assert settings.consumer_name("order") == "order-service"


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("shipping=ships", "unknown service 'shipping'"),
        ("inventory=", "a consumer name is"),
        ("inventory=inv.group", "a consumer name is"),
        ("inventory=inv group", "a consumer name is"),
        ("inventory", "is not service=name"),
        ("inventory=a,inventory=b", "inventory is named twice"),
        ("inventory=shared,payment=shared", "would share the consumer name 'shared'"),
        ("inventory=order-service", "would share the consumer name 'order-service'"),
    ],
)
def test_invalid_consumer_names_are_refused(value: str, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Settings(consumer_names=value)


def test_invalid_consumer_names_stop_startup_with_one_line() -> None:
    env = {**os.environ, "CONSUMER_NAMES": "shipping=ships"}
    done = subprocess.run(
        [sys.executable, "-c", "from config import get_settings; get_settings()"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "switchboard: invalid configuration: CONSUMER_NAMES: 'shipping=ships': unknown service 'shipping'; "
        "services are: order, inventory, payment, notification"
    ]


def test_flat_fields_are_off_by_default() -> None:
    assert Settings().order_events_flat_fields is False


def _created(items: list[dict[str, Any]]) -> OrderCreated:
    return OrderCreated.model_validate({"orderId": "1001", "eventId": EVENT_ID, "items": items})


def test_single_item_order_carries_flat_fields_when_asked() -> None:
    body = json.loads(_created([{"productId": "P123", "quantity": 2}]).with_flat_fields().to_json_bytes())
    assert (body["productId"], body["quantity"]) == ("P123", 2)
    assert body["items"] == [{"productId": "P123", "quantity": 2}]


def test_without_the_option_or_with_two_items_no_flat_fields_are_written() -> None:
    plain = json.loads(_created([{"productId": "P123", "quantity": 2}]).to_json_bytes())
    two = json.loads(
        _created([{"productId": "P1", "quantity": 1}, {"productId": "P2", "quantity": 1}])
        .with_flat_fields()
        .to_json_bytes()
    )
    for body in (plain, two):
        assert "productId" not in body
        assert "quantity" not in body


def test_consumers_accept_matching_flat_fields() -> None:
    body = {"orderId": "1", "eventId": EVENT_ID, "items": [{"productId": "P", "quantity": 2}], "productId": "P"}
    event = OrderCreated.model_validate_json(json.dumps({**body, "quantity": 2}))
    assert [(i.product_id, i.quantity) for i in event.items] == [("P", 2)]


@pytest.mark.parametrize(
    "extra",
    [
        {"productId": "OTHER", "quantity": 2},
        {"productId": "P", "quantity": 3},
        {"quantity": "2"},
    ],
)
def test_flat_fields_that_differ_from_the_item_make_the_event_invalid(extra: dict[str, Any]) -> None:
    body = {"orderId": "1", "eventId": EVENT_ID, "items": [{"productId": "P", "quantity": 2}], **extra}
    with pytest.raises(ValidationError):
        OrderCreated.model_validate_json(json.dumps(body))


def test_flat_fields_with_several_items_make_the_event_invalid() -> None:
    items = [{"productId": "P", "quantity": 2}, {"productId": "Q", "quantity": 1}]
    with pytest.raises(ValidationError, match="exactly one item"):
        OrderCreated.model_validate_json(
            json.dumps({"orderId": "1", "eventId": EVENT_ID, "items": items, "productId": "P"})
        )


def test_schema_shows_the_flat_fields_as_optional_compatibility_fields() -> None:
    schema = OrderCreated.model_json_schema(by_alias=True)
    assert {"productId", "quantity"} <= set(schema["properties"])
    assert not {"productId", "quantity"} & set(schema.get("required", []))
    assert "Compatibility field" in schema["properties"]["productId"]["description"]
