"""docs/contract.md, observability and outages: tests that stop a consumer or the broker.

Named to run last for each broker: they disturb the shared system.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.otlp import OtlpCollector, ReceivedSpan
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


async def test_spans_of_one_order_reach_an_otlp_collector_from_both_services(system: System) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, the order service's request and publish spans and
    the inventory service's consumer span of one order are exported in the caller's trace."""
    traced = ("order", "inventory")
    with OtlpCollector() as collector:
        try:
            for name in traced:
                await system.restart(
                    name, OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint, OTEL_BSP_SCHEDULE_DELAY="100"
                )
            product = uid("P")
            await system.set_stock(product, 5)
            r, trace_id = await system.post_traced_order({"productId": product, "quantity": 1})
            assert r.status_code == 202
            consume = f"{system.channel('order-events')} process"

            def all_arrived(spans: list[ReceivedSpan]) -> bool:
                # each service exports on its own schedule: the inventory's span may come first
                order_kinds = {s.kind for s in spans if s.service == "order-service"}
                consumed = any(s.service == "inventory-service" and s.name == consume for s in spans)
                return consumed and order_kinds >= {"SPAN_KIND_SERVER", "SPAN_KIND_PRODUCER"}

            spans = await eventually(
                lambda: asyncio.sleep(0, collector.spans_of(trace_id)),
                all_arrived,
                what=f"the order service's server and producer spans and the inventory's '{consume}' span "
                f"in trace {trace_id}",
            )
        finally:
            for name in traced:
                await system.restart(name)
    assert [s.kind for s in spans if s.name == consume] == ["SPAN_KIND_CONSUMER"]


BACKLOG = 4000
"""Well above what a graceful stop still handles after HANDLED_BEFORE_STOP (its running
batches, up to 4 × 256 messages), so that some of the backlog is handed over."""
HANDLED_BEFORE_STOP = 300
"""Past the first, small batches of a start (deliveries trickling in, each batch settled before
the next arrives) and into steady consumption, where a batch is always being handled."""
CRASHES = 3
PUBLISH_CHUNK = 500
"""Publishes in flight at once: far faster than the service handles them, so a backlog builds."""
HANDOVER_TIMEOUT_S = 25.0
"""Below NATS's ack_wait (30 s): a message a stopped consumer kept unacknowledged would be late."""


async def test_crash_mid_batch_processes_every_message_exactly_once(system: System, raw: RawClient) -> None:
    """SIGKILL the inventory service while it works through a backlog in batches: after a restart
    every order is decided exactly once (stock, one outcome event id per order), although the
    messages of the interrupted batch were handled again. The kill lands at a moment chosen
    from outside: between two batches everything handled may be acknowledged already, so a
    crash that interrupted no batch is repeated with a new backlog (CRASHES at most)."""
    for _ in range(CRASHES):
        backlog = await interrupt_backlog(system, raw, ServiceProcess.kill, while_running=False)

        await eventually(
            lambda b=backlog: system.stock(b.product), lambda s: s == BACKLOG, timeout=120, what="all reserved"
        )
        await assert_one_outcome_each(raw, backlog)
        assert await system.stock(backlog.product) == BACKLOG
        if handled_twice(system, backlog.orders):
            return
    pytest.fail(f"none of {CRASHES} crashes interrupted a batch: nothing came again")


async def test_graceful_stop_mid_backlog_hands_over_without_repeats_or_waits(system: System, raw: RawClient) -> None:
    """SIGTERM the inventory service in the middle of a backlog: it finishes and acknowledges the
    batches it started and gives back what it had not started, so the restarted service handles
    every remaining order at once (no broker redelivery timeout) and none a second time."""
    backlog = await interrupt_backlog(system, raw, ServiceProcess.stop, while_running=True)
    assert backlog.handled_before_restart < BACKLOG, "the stop came after the whole backlog: nothing was handed over"

    await eventually(
        lambda: system.stock(backlog.product), lambda s: s == BACKLOG, timeout=HANDOVER_TIMEOUT_S, what="all reserved"
    )
    assert not handled_twice(system, backlog.orders), "a message handled before the stop came again"
    await assert_one_outcome_each(raw, backlog)


@dataclass
class Backlog:
    product: str
    orders: list[str]
    outcomes: Any
    """A tap on the outcome channel, opened before the backlog was published."""
    handled_before_restart: int
    """Orders the interrupted process logged as handled."""


async def interrupt_backlog(
    system: System, raw: RawClient, interrupt: Callable[[ServiceProcess], None], *, while_running: bool
) -> Backlog:
    """Give the inventory service BACKLOG orders of a new product, `interrupt` it once it handled
    HANDLED_BEFORE_STOP of them, and start it again. `while_running`: they are published to
    the running service, faster than it handles them (a SIGTERM then lands in steady
    consumption; a service started on a ready backlog may consume all of it while still
    starting, before a SIGTERM takes effect). Otherwise the service starts on the whole
    backlog, so it works in full batches."""
    product = uid("P")
    await system.set_stock(product, BACKLOG * 2)
    inventory = system.services["inventory"]
    orders = [uid("backlog") for _ in range(BACKLOG)]
    outcomes = await raw.tap(system.channel("inventory-events"))
    if not while_running:
        system.stop("inventory")
    publishing = asyncio.create_task(publish_orders(raw, system.channel("order-events"), orders, product))
    try:
        if not while_running:
            await publishing
            inventory.start()
        await eventually(
            # only the running process's lines: reading the whole log at every poll made the kill land
            # too late on a fast broker, after the batch it was meant to interrupt
            lambda: asyncio.sleep(0, sum(handled_counts(system, orders, since_start=True).values())),
            lambda handled: handled >= HANDLED_BEFORE_STOP,
            interval=0.005,
            what=f"inventory handling {HANDLED_BEFORE_STOP} messages of the backlog",
        )
        interrupt(inventory)
        handled_before_restart = sum(handled_counts(system, orders).values())
        await publishing
    finally:
        publishing.cancel()
        await system.start("inventory")
    return Backlog(product, orders, outcomes, handled_before_restart)


async def assert_one_outcome_each(raw: RawClient, backlog: Backlog) -> None:
    event_ids = await eventually(
        lambda: outcome_ids(raw, backlog.outcomes, set(backlog.orders)),
        lambda ids: len(ids) == len(backlog.orders),
        timeout=60,
        what="an outcome event for every order",
    )
    assert [o for o, ids in event_ids.items() if len(ids) != 1] == []


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
    for start in range(0, len(orders), PUBLISH_CHUNK):
        chunk = orders[start : start + PUBLISH_CHUNK]
        await asyncio.gather(
            *(
                raw.publish(channel, json.dumps({"orderId": o, "productId": product, "quantity": 1}).encode(), o)
                for o in chunk
            )
        )


def handled_twice(system: System, orders: list[str]) -> bool:
    """Some OrderCreated of `orders` was handled twice (by the stopped process and its successor)."""
    return any(n > 1 for n in handled_counts(system, orders).values())


def handled_counts(system: System, orders: list[str], *, since_start: bool = False) -> Counter[str]:
    """How often the inventory service logged handling the OrderCreated of each of `orders`
    (`since_start`: its running process only)."""
    wanted = set(orders)
    needle = f"handled channel={system.channel('order-events')} "
    lines = system.services["inventory"].log_lines(needle, since_start=since_start)
    handled = (line.split("orderId=", 1)[1].split(" ", 1)[0] for _, line in lines)
    return Counter(order for order in handled if order in wanted)
