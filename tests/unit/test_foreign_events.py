"""OrderCreated bodies of foreign producers: the tutorial's shapes, and a stable eventId."""

from __future__ import annotations

import json
import os
import tempfile

os.environ.update({"BROKER": "kafka", "DATA_DIR": tempfile.mkdtemp(prefix="sb-unit-"), "CHANNEL_NAMESPACE": ""})

from services.events import OrderCreated, OrderItem
from services.order import PlaceOrder

CONCEPTUAL = {"eventType": "OrderCreated", "orderId": "123", "userId": "456", "items": ["itemA", "itemB"]}
FLAT = {"orderId": "1001", "productId": "P123", "quantity": 2}


def test_product_ids_as_items_are_one_of_each_in_schema_version_0() -> None:
    event = OrderCreated.model_validate_json(json.dumps(CONCEPTUAL))
    assert event.items == [OrderItem(product_id="itemA", quantity=1), OrderItem(product_id="itemB", quantity=1)]
    assert (event.schema_version, event.user_id) == (0, "456")


def test_a_body_without_event_id_gets_the_same_id_on_every_delivery() -> None:
    first, again = (OrderCreated.model_validate_json(json.dumps(FLAT)) for _ in range(2))
    other = OrderCreated.model_validate_json(json.dumps({**FLAT, "orderId": "1002"}))
    assert first.event_id == again.event_id != other.event_id
    conceptual = [OrderCreated.model_validate_json(json.dumps(CONCEPTUAL)).event_id for _ in range(2)]
    assert conceptual[0] == conceptual[1]


def test_our_own_events_keep_their_id_and_version() -> None:
    ours = OrderCreated(order_id="o1", items=[OrderItem(product_id="P1", quantity=1)])
    assert OrderCreated(order_id="o1", items=ours.items).event_id != ours.event_id  # built in code: random
    read = OrderCreated.model_validate_json(ours.to_json_bytes())
    assert (read.event_id, read.schema_version) == (ours.event_id, 1)


def test_the_http_body_takes_product_ids_as_items_too() -> None:
    order = PlaceOrder.model_validate_json(json.dumps({"userId": "456", "items": ["itemA", "itemA"]}))
    assert order.items == [OrderItem(product_id="itemA", quantity=1)] * 2
