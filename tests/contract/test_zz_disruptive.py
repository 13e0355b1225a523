"""CONTRACT.md, observability and outages: tests that stop a consumer or the broker.

Named to run last for each broker: they disturb the shared system.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.raw import RawClient
from tests.support.system import System, brokers_script, eventually, metric_value, uid

pytestmark = pytest.mark.contract


def lag(text: str, system: System) -> float:
    return metric_value(
        text, "consumer_lag_messages", destination=system.channel("order-events"), consumer="inventory-service"
    )


async def test_consumer_lag_rises_while_inventory_is_down_and_drains_after(system: System) -> None:
    product = uid("P")
    await system.set_stock(product, 100)
    system.stop("inventory")
    try:
        ids = [(await system.post_order({"productId": product, "quantity": 1})).json()["orderId"] for _ in range(5)]
        await eventually(lambda: system.metrics("order"), lambda t: lag(t, system) >= 5, what="lag >= 5")
    finally:
        await system.start("inventory")

    await asyncio.gather(*(system.wait_status(i, {"CONFIRMED"}) for i in ids))
    await eventually(lambda: system.metrics("order"), lambda t: lag(t, system) == 0, what="lag back to 0")
    await eventually(lambda: system.metrics("inventory"), lambda t: lag(t, system) == 0, what="own lag 0")


async def test_broker_outage_makes_ready_503_and_orders_survive_it(system: System, raw: RawClient) -> None:
    product, order_id = uid("P"), uid("outage")
    await system.set_stock(product, 10)
    tap = await raw.tap(system.channel("order-events"))
    ready = system.url("order", "/ready")

    brokers_script("stop", system.broker)
    try:
        await eventually(lambda: system.http.get(ready), lambda r: r.status_code == 503, what="/ready 503")
        r = await system.post_order({"orderId": order_id, "productId": product, "quantity": 2})
        assert r.status_code == 202
    finally:
        brokers_script("start", system.broker)

    for name in system.services:
        await system.wait_ready(name, timeout=120)
    await system.wait_status(order_id, {"RESERVED", "CONFIRMED"}, timeout=120)
    assert await system.stock(product) == 8
    events = [m for m in await raw.tapped(tap) if m.order_id() == order_id]
    assert len(events) == 1
