"""CONTRACT.md, observability and outages: tests that stop a consumer or the broker.

Named to run last for each broker: they disturb the shared system.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

from tests.support.raw import RawClient
from tests.support.system import ServiceProcess, System, brokers_script, eventually, metric_value, uid

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


CRASH_BACKLOG = 1500
HANDLED_BEFORE_CRASH = 100


async def test_crash_mid_batch_processes_every_message_exactly_once(system: System, raw: RawClient) -> None:
    """SIGKILL the inventory service while it works through a backlog in batches: after a restart
    every order is decided exactly once (stock, one outcome event id per order), although the
    messages of the interrupted batch were handled again."""
    product = uid("P")
    await system.set_stock(product, CRASH_BACKLOG * 2)
    inventory = system.services["inventory"]
    orders = [uid("crash") for _ in range(CRASH_BACKLOG)]
    outcomes = await raw.tap(system.channel("inventory-events"))
    system.stop("inventory")
    try:
        await publish_orders(raw, system.channel("order-events"), orders, product)
        needle = f"handled channel={system.channel('order-events')} "
        inventory.start()
        await eventually(
            lambda: asyncio.sleep(0, len(inventory.log_lines(needle))),
            lambda handled: handled >= HANDLED_BEFORE_CRASH,
            interval=0.005,
            what=f"inventory handling {HANDLED_BEFORE_CRASH} messages of the backlog",
        )
        inventory.kill()
    finally:
        await system.start("inventory")

    await eventually(lambda: system.stock(product), lambda s: s == CRASH_BACKLOG, timeout=120, what="all reserved")
    assert handled_twice(inventory, orders), "the crash interrupted no batch: nothing was redelivered"
    event_ids = await eventually(
        lambda: outcome_ids(raw, outcomes, set(orders)),
        lambda ids: len(ids) == len(orders),
        timeout=60,
        what="an outcome event for every order",
    )
    assert [o for o, ids in event_ids.items() if len(ids) != 1] == []
    assert await system.stock(product) == CRASH_BACKLOG


async def outcome_ids(raw: RawClient, tap: Any, orders: set[str]) -> OutcomeIds:
    """Event ids of the inventory outcomes of `orders` (a re-published event keeps its id)."""
    ids = OutcomeIds()
    for message in await raw.tapped(tap):
        event = message.json()
        if event.get("orderId") in orders:
            assert event["eventType"] == "InventoryReserved", event
            ids.setdefault(event["orderId"], set()).add(event["eventId"])
    return ids


class OutcomeIds(dict[str, set[str]]):
    """Order id → outcome event ids, with a short repr for timeout messages."""

    def __repr__(self) -> str:
        return f"<outcomes of {len(self)} orders>"


async def publish_orders(raw: RawClient, channel: str, orders: list[str], product: str) -> None:
    for start in range(0, len(orders), 100):
        chunk = orders[start : start + 100]
        await asyncio.gather(
            *(
                raw.publish(channel, json.dumps({"orderId": o, "productId": product, "quantity": 1}).encode(), o)
                for o in chunk
            )
        )


def handled_twice(inventory: ServiceProcess, orders: list[str]) -> bool:
    """Some order was handled in a batch the crash interrupted, and again after the restart."""
    wanted = set(orders)
    handled = Counter(
        line.split("orderId=", 1)[1].split(" ", 1)[0] for _, line in inventory.log_lines("handled channel=")
    )
    return any(n > 1 for order, n in handled.items() if order in wanted)
