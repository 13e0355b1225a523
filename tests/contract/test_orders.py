"""docs/contract.md, HTTP and order flow, on every real broker."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.raw import RawClient
from tests.support.system import System, eventually, metric_value, uid

pytestmark = pytest.mark.contract
DONE = {"RESERVED", "CONFIRMED"}


async def test_seed_curl_flow_deducts_stock(system: System) -> None:
    product, order_id = uid("P"), uid("o")
    await system.set_stock(product, 10)

    r = await system.post_order({"orderId": order_id, "productId": product, "quantity": 2})

    assert r.status_code == 202
    assert r.json() == {"orderId": order_id, "status": "PENDING"}
    order = await system.wait_status(order_id, DONE)
    assert order["items"] == [{"productId": product, "quantity": 2}]
    assert await system.stock(product) == 8


async def test_items_shape_reserves_every_item_and_payment_confirms(system: System) -> None:
    a, b = uid("A"), uid("B")
    await system.set_stock(a, 5)
    await system.set_stock(b, 5)

    r = await system.post_order(
        {"userId": "u1", "items": [{"productId": a, "quantity": 2}, {"productId": b, "quantity": 3}]}
    )

    assert r.status_code == 202
    order_id = r.json()["orderId"]
    assert order_id
    order = await system.wait_status(order_id, {"CONFIRMED"})
    assert order["userId"] == "u1"
    assert (await system.stock(a), await system.stock(b)) == (3, 2)


async def test_insufficient_stock_rejects_and_leaves_stock_unchanged(system: System) -> None:
    a, b = uid("A"), uid("B")
    await system.set_stock(a, 5)
    await system.set_stock(b, 1)

    r = await system.post_order({"items": [{"productId": a, "quantity": 2}, {"productId": b, "quantity": 3}]})

    order = await system.wait_status(r.json()["orderId"], {"REJECTED"})
    assert order["status"] == "REJECTED"
    assert (await system.stock(a), await system.stock(b)) == (5, 1)


async def test_unknown_product_is_rejected(system: System) -> None:
    r = await system.post_order({"productId": uid("NOPE"), "quantity": 1})
    await system.wait_status(r.json()["orderId"], {"REJECTED"})


async def test_concurrent_orders_never_oversell(system: System) -> None:
    product = uid("P")
    await system.set_stock(product, 10)

    responses = await asyncio.gather(*(system.post_order({"productId": product, "quantity": 1}) for _ in range(40)))

    assert all(r.status_code == 202 for r in responses)
    ids = [r.json()["orderId"] for r in responses]
    final = {"CONFIRMED", "REJECTED"}
    orders = await asyncio.gather(*(system.wait_status(i, final, timeout=60) for i in ids))
    statuses = [o["status"] for o in orders]
    assert statuses.count("CONFIRMED") == 10
    assert statuses.count("REJECTED") == 30
    assert await system.stock(product) == 0


async def test_payment_failure_cancels_and_releases_stock(system: System) -> None:
    product = uid("P")
    await system.set_stock(product, 4)

    r = await system.post_order({"userId": "declined-" + uid(), "items": [{"productId": product, "quantity": 3}]})

    await system.wait_status(r.json()["orderId"], {"CANCELLED"})
    assert await eventually(lambda: system.stock(product), lambda s: s == 4, what="stock released")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"productId": "P1", "quantity": 0}, "items.0.quantity"),
        ({"productId": "P1", "quantity": "two"}, "items.0.quantity"),
        ({"productId": "", "quantity": 1}, "items.0.productId"),
        ({"items": []}, "items"),
        ({"items": [{"productId": "P1"}]}, "items.0.quantity"),
        ({"orderId": "bad id!", "productId": "P1", "quantity": 1}, "orderId"),
    ],
)
async def test_invalid_bodies_get_422_naming_the_field(system: System, body: dict, field: str) -> None:
    r = await system.post_order(body)
    assert r.status_code == 422
    assert field in {e["field"] for e in r.json()["errors"]}


async def test_malformed_json_gets_422(system: System) -> None:
    r = await system.http.post(
        system.url("order", "/orders"), content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


async def test_body_over_64_kib_gets_413(system: System) -> None:
    big = {"productId": "P1", "quantity": 1, "userId": "x" * (65 * 1024)}
    r = await system.http.post(
        system.url("order", "/orders"), content=json.dumps(big).encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


async def test_unknown_order_and_product_are_404(system: System) -> None:
    assert (await system.http.get(system.url("order", f"/orders/{uid()}"))).status_code == 404
    assert (await system.http.get(system.url("inventory", f"/inventory/{uid()}"))).status_code == 404


async def test_setting_stock_needs_the_admin_token(system: System) -> None:
    url = system.url("inventory", f"/inventory/{uid('P')}")
    missing = await system.http.put(url, json={"available": 1})
    assert (missing.status_code, missing.headers.get("www-authenticate")) == (401, "Bearer")
    wrong = {"Authorization": "Bearer wrong"}
    assert (await system.http.put(url, json={"available": 1}, headers=wrong)).status_code == 403


async def test_same_order_twice_is_one_order_and_one_event(system: System, raw: RawClient) -> None:
    product, order_id = uid("P"), uid("o")
    await system.set_stock(product, 10)
    tap = await raw.tap(system.channel("order-events"))
    body = {"orderId": order_id, "productId": product, "quantity": 1}

    first = await system.post_order(body)
    again = await system.post_order(body)
    conflict = await system.post_order({**body, "quantity": 2})

    assert (first.status_code, again.status_code, conflict.status_code) == (202, 202, 409)
    assert again.json()["orderId"] == first.json()["orderId"] == order_id
    await system.wait_status(order_id, {"CONFIRMED"})
    assert await system.stock(product) == 9
    events = [m for m in await raw.tapped(tap) if m.order_id() == order_id]
    assert len(events) == 1
    event = events[0].json()
    assert event["eventType"] == "OrderCreated"
    assert {"eventId", "schemaVersion", "occurredAt", "orderId", "items"} <= event.keys()


async def test_seed_flat_event_from_a_foreign_client_is_consumed(system: System, raw: RawClient) -> None:
    product, order_id = uid("P"), uid("seed")
    await system.set_stock(product, 10)

    body = json.dumps({"orderId": order_id, "productId": product, "quantity": 3}).encode()
    await raw.publish(system.channel("order-events"), body, key=order_id)

    await eventually(lambda: system.stock(product), lambda s: s == 7, what="seed event consumed")
    assert len(system.delivery_lines("inventory", "order-events", order_id)) == 1
    # the producer keyed (RabbitMQ: routed) it by orderId: no metric may be labelled per order
    for name in ("inventory", "order", "notification"):
        assert order_id not in await system.metrics(name)


async def test_the_tutorials_conceptual_event_reserves_one_of_each_product(system: System, raw: RawClient) -> None:
    a, b, order_id = uid("A"), uid("B"), uid("concept")
    await system.set_stock(a, 5)
    await system.set_stock(b, 5)
    body = {"eventType": "OrderCreated", "orderId": order_id, "userId": "456", "items": [a, b]}
    await raw.publish(system.channel("order-events"), json.dumps(body).encode(), key=order_id)

    async def stocks() -> tuple[int, int]:
        return await system.stock(a), await system.stock(b)

    await eventually(stocks, lambda s: s == (4, 4), what="one of each product reserved")


async def test_a_flat_event_keeps_one_event_id_across_its_attempts(system: System, raw: RawClient) -> None:
    order_id = uid("flat")
    body = {"orderId": order_id, "productId": "FAIL", "quantity": 1}
    await raw.publish(system.channel("order-events"), json.dumps(body).encode(), key=order_id)

    lines = await eventually(
        lambda: asyncio.sleep(0, system.delivery_lines("inventory", "order-events", order_id)),
        lambda found: len(found) == 3,
        what="three attempts logged",
    )
    event_ids = {line.split("eventId=", 1)[1].split()[0] for _, line in lines}
    assert len(event_ids) == 1
    assert event_ids != {"-"}


async def test_redelivered_order_created_reserves_once(system: System, raw: RawClient) -> None:
    product, order_id = uid("P"), uid("dup")
    await system.set_stock(product, 10)
    event = {
        "eventType": "OrderCreated",
        "eventId": "3b241101-e2bb-4255-8caf-4136c566a962",
        "schemaVersion": 1,
        "occurredAt": "2026-11-27T10:00:00Z",
        "orderId": order_id,
        "items": [{"productId": product, "quantity": 2}],
    }
    for _ in range(3):
        await raw.publish(system.channel("order-events"), json.dumps(event).encode(), key=order_id)

    await eventually(
        lambda: asyncio.sleep(0, system.delivery_lines("inventory", "order-events", order_id, "handled")),
        lambda lines: len(lines) == 3,
        what="three deliveries handled",
    )
    assert await system.stock(product) == 8


async def test_notifications_record_each_state_change(system: System) -> None:
    product = uid("P")
    await system.set_stock(product, 3)
    r = await system.post_order({"productId": product, "quantity": 1})
    order_id = r.json()["orderId"]

    def url() -> str:
        return system.url("notification", f"/notifications?orderId={order_id}")

    async def kinds() -> list[str]:
        return [n["eventType"] for n in (await system.http.get(url())).json()]

    seen = await eventually(kinds, lambda k: {"OrderCreated", "InventoryReserved", "PaymentProcessed"} <= set(k))
    assert len(seen) == len(set(seen))


async def test_probes_and_docs(system: System) -> None:
    for name in system.services:
        assert (await system.http.get(system.url(name, "/health"))).status_code == 200
        assert (await system.http.get(system.url(name, "/ready"))).status_code == 200
        metrics = await system.http.get(system.url(name, "/metrics"))
        assert metrics.status_code == 200
        assert "retry_attempts_total{" in metrics.text
        spec = (await system.http.get(system.url(name, "/docs/asyncapi.json"))).json()
        assert spec["channels"]
        assert (await system.http.get(system.url(name, "/docs/asyncapi"))).status_code == 200


async def test_trace_of_the_http_request_reaches_the_inventory_handler(system: System) -> None:
    product, order_id = uid("P"), uid("trace")
    await system.set_stock(product, 5)

    r, trace_id = await system.post_traced_order({"orderId": order_id, "productId": product, "quantity": 1})

    assert r.status_code == 202
    assert trace_id in r.headers["traceparent"]
    await system.wait_status(order_id, DONE)
    handled = [line for _, line in system.services["inventory"].log_lines(f"orderId={order_id} eventId=")]
    [created] = [line for line in handled if "eventType=OrderCreated" in line]
    assert f"[trace={trace_id}]" in created
    assert all(f"[trace={trace_id}]" in line for line in handled)  # the payment outcome continues the trace


async def test_orders_posted_together_each_keep_their_own_trace(system: System) -> None:
    """Requests arriving together share one store commit (SQLite group commit); each order's
    event must still carry its own request's trace context, not that of another request."""
    product = uid("P")
    await system.set_stock(product, 100)
    orders = [uid("ctrace") for _ in range(20)]
    posted = await asyncio.gather(
        *(system.post_traced_order({"orderId": o, "productId": product, "quantity": 1}) for o in orders)
    )
    assert [r.status_code for r, _ in posted] == [202] * len(orders)
    wrong = []
    for order_id, (_, trace_id) in zip(orders, posted, strict=True):
        await system.wait_status(order_id, DONE)
        [(_, line)] = system.delivery_lines("inventory", "order-events", order_id, "handled")
        if f"[trace={trace_id}]" not in line:
            wrong.append(line)
    assert not wrong, f"{len(wrong)} of {len(orders)} orders handled in another request's trace: {wrong[:2]}"


async def test_domain_counters_follow_the_saga(system: System) -> None:
    broker = {"kafka": "kafka", "rabbit": "rabbitmq", "nats": "nats", "redis": "redis"}[system.broker]
    product = uid("P")
    await system.set_stock(product, 1)
    before = {name: await system.metrics(name) for name in ("order", "inventory", "payment")}

    ok = (await system.post_order({"productId": product, "quantity": 1})).json()["orderId"]
    # orders of different keys may be consumed in any order (Kafka partitions): the first takes the stock first
    await system.wait_status(ok, {"RESERVED", "CONFIRMED"})
    no = (await system.post_order({"productId": product, "quantity": 1})).json()["orderId"]
    await system.wait_status(ok, {"CONFIRMED"})
    await system.wait_status(no, {"REJECTED"})

    def grew(service: str, name: str, **labels: str) -> float:
        return metric_value(after[service], name, broker=broker, **labels) - metric_value(
            before[service], name, broker=broker, **labels
        )

    after = {name: await system.metrics(name) for name in ("order", "inventory", "payment")}
    assert grew("order", "orders_created_total") == 2
    assert grew("order", "order_status_changes_total", status="REJECTED") == 1
    assert grew("inventory", "reservations_total", result="RESERVED") == 1
    assert grew("inventory", "reservations_total", result="REJECTED") == 1
    assert grew("payment", "payments_total", result="PaymentProcessed") == 1


async def test_faststream_publish_metrics_count_every_outbox_event(system: System) -> None:
    """`faststream_published_messages_total` (docs/contract.md, "Metrics") counts each event the
    outboxes publish, on its channel, whichever path the transport sends it by."""
    broker = {"kafka": "kafka", "rabbit": "rabbitmq", "nats": "nats", "redis": "redis"}[system.broker]
    product = uid("P")
    await system.set_stock(product, 1)

    async def published(service: str, channel: str) -> float:
        labels = {"broker": broker, "destination": system.channel(channel), "status": "success"}
        return metric_value(await system.metrics(service), "faststream_published_messages_total", **labels)

    before_order = await published("order", "order-events")
    before_inventory = await published("inventory", "inventory-events")
    ok = (await system.post_order({"productId": product, "quantity": 1})).json()["orderId"]
    # orders of different keys may be consumed in any order (Kafka partitions): the first takes the stock first
    await system.wait_status(ok, {"RESERVED", "CONFIRMED"})
    no = (await system.post_order({"productId": product, "quantity": 1})).json()["orderId"]
    await system.wait_status(ok, {"CONFIRMED"})
    await system.wait_status(no, {"REJECTED"})

    # a consumer may see an event before its publisher has the broker's confirmation
    await eventually(lambda: published("order", "order-events"), lambda n: n - before_order == 2, what="2 OrderCreated")
    # InventoryReserved and InventoryRejected; no release, as the payment succeeded
    await eventually(
        lambda: published("inventory", "inventory-events"), lambda n: n - before_inventory == 2, what="2 outcomes"
    )
    durations = metric_value(
        await system.metrics("inventory"), "faststream_published_messages_duration_seconds_count", broker=broker
    )
    assert durations > 0
