"""docs/contract.md, failure handling: retries, dead letters, replay, on every real broker.

The system runs with RETRY_MAX_ATTEMPTS=3, RETRY_DELAY_MS=400 and
RETRY_BACKOFF_MULTIPLIER=2.0, so deliveries 2 and 3 wait 400 ms and 800 ms.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from datetime import datetime

import pytest

from tests.support.raw import RawClient, RawMessage
from tests.support.system import ADMIN_TOKEN, ROOT, System, eventually, metric_value, uid

pytestmark = pytest.mark.contract
ENVELOPE = {
    "x-original-destination",
    "x-consumer",
    "x-exception-type",
    "x-exception-message",
    "x-attempts",
    "x-failed-at",
}
TOLERANCE_S = 0.05


async def dead_letters_of(raw: RawClient, system: System, order_id: str, count: int = 1) -> list[RawMessage]:
    async def probe() -> list[RawMessage]:
        return [m for m in await raw.dead_letters(system.channel("order-events")) if m.order_id() == order_id]

    return await eventually(probe, lambda found: len(found) >= count, what=f"{count} dead letter(s) of {order_id}")


def failed_attempts(system: System, order_id: str) -> list[tuple[datetime, str]]:
    """The inventory's line for each failed attempt at the order (retried or dead-lettered)."""
    return system.delivery_lines("inventory", "order-events", order_id, "retrying", "dead-lettering")


def handler_runs(system: System, order_id: str) -> list[datetime]:
    return [t for t, _ in failed_attempts(system, order_id)]


async def test_failing_order_is_retried_with_backoff_then_dead_lettered(system: System, raw: RawClient) -> None:
    order_id = uid("fail")
    tap = await raw.tap(system.channel("order-events"))

    r, trace_id = await system.post_traced_order({"orderId": order_id, "productId": "FAIL", "quantity": 1})
    assert r.status_code == 202

    [letter] = await dead_letters_of(raw, system, order_id)
    assert trace_id in letter.headers["traceparent"]
    attempts = failed_attempts(system, order_id)
    assert all(f"[trace={trace_id}]" in line for _, line in attempts)
    assert [line.split("] ", 1)[1].split(" ", 1)[0] for _, line in attempts] == [
        "retrying",
        "retrying",
        "dead-lettering",
    ]
    runs = handler_runs(system, order_id)
    assert len(runs) == 3
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 0.4 - TOLERANCE_S
    assert gaps[1] >= 0.8 - TOLERANCE_S
    [original] = [m for m in await raw.tapped(tap) if m.order_id() == order_id]
    assert letter.body == original.body
    assert letter.headers.keys() >= ENVELOPE
    assert letter.headers["x-original-destination"] == system.channel("order-events")
    assert letter.headers["x-consumer"] == "inventory-service"
    assert letter.headers["x-attempts"] == "3"
    assert letter.headers["x-exception-type"].endswith("DemoFailure")
    assert "FAIL" in letter.headers["x-exception-message"]
    datetime.fromisoformat(letter.headers["x-failed-at"])
    if system.broker == "kafka":
        assert {"x-original-partition", "x-original-offset"} <= letter.headers.keys()
    await asyncio.sleep(0)  # the order itself stays PENDING: nothing was reserved
    assert (await system.order(order_id))["status"] == "PENDING"


async def test_retry_and_dead_letter_metrics_grow_by_the_right_amounts(system: System, raw: RawClient) -> None:
    labels = {
        "broker": {"kafka": "kafka", "rabbit": "rabbitmq", "nats": "nats", "redis": "redis"}[system.broker],
        "destination": system.channel("order-events"),
        "consumer": "inventory-service",
    }
    before = await system.metrics("inventory")
    order_id = uid("fail")

    await system.post_order({"orderId": order_id, "productId": "FAIL", "quantity": 1})
    await dead_letters_of(raw, system, order_id)

    after = await eventually(
        lambda: system.metrics("inventory"),
        lambda text: (
            metric_value(text, "dead_letter_topic_messages_total", reason="exhausted", **labels)
            > metric_value(before, "dead_letter_topic_messages_total", reason="exhausted", **labels)
        ),
        what="dead-letter counter",
    )
    retries = metric_value(after, "retry_attempts_total", **labels) - metric_value(
        before, "retry_attempts_total", **labels
    )
    exhausted = metric_value(after, "dead_letter_topic_messages_total", reason="exhausted", **labels) - metric_value(
        before, "dead_letter_topic_messages_total", reason="exhausted", **labels
    )
    assert (retries, exhausted) == (2, 1)


async def test_healthy_order_is_not_blocked_by_a_retrying_one(system: System) -> None:
    product, failing, healthy = uid("P"), uid("fail"), uid("ok")
    await system.set_stock(product, 5)

    await system.post_order({"orderId": failing, "productId": "FAIL", "quantity": 1})
    await eventually(lambda: asyncio.sleep(0, handler_runs(system, failing)), lambda runs: len(runs) >= 1)
    await system.post_order({"orderId": healthy, "productId": product, "quantity": 1})
    await system.wait_status(healthy, {"RESERVED", "CONFIRMED"})

    assert len(handler_runs(system, failing)) < 3, "the healthy order waited for the failing one's retries"


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("undecodable", b"\xff\xfe not json at all"),
        ("schema-invalid", b'{"eventType": "OrderCreated", "orderId": "%s", "items": "nope"}'),
    ],
)
async def test_poison_message_is_dead_lettered_at_once(system: System, raw: RawClient, kind: str, body: bytes) -> None:
    marker = uid("poison")
    payload = body.replace(b"%s", marker.encode()) if b"%s" in body else body + marker.encode()

    await raw.publish(system.channel("order-events"), payload, key=marker)

    async def probe() -> list[RawMessage]:
        return [m for m in await raw.dead_letters(system.channel("order-events")) if m.body == payload]

    # each consumer of the channel (inventory and notification) dead-letters its own copy
    letters = await eventually(probe, lambda found: len(found) >= 2, what=f"{kind} poison in DLT")
    assert sorted(m.headers["x-consumer"] for m in letters) == ["inventory-service", "notification-service"]
    for letter in letters:
        assert letter.headers["x-attempts"] == "1"
        assert letter.headers.keys() >= ENVELOPE
    product = uid("P")
    await system.set_stock(product, 1)
    r = await system.post_order({"productId": product, "quantity": 1})
    await system.wait_status(r.json()["orderId"], {"RESERVED", "CONFIRMED"})


def dlt_command(system: System, *args: str) -> list[dict]:
    env = {**os.environ, "BROKER": system.broker, "CHANNEL_NAMESPACE": system.namespace}
    out = subprocess.run(
        [sys.executable, "-m", "brokers.dlt", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


async def test_replay_after_the_fault_is_removed_processes_the_order_once(system: System, raw: RawClient) -> None:
    product, order_id = uid("FLAKY"), uid("replay")
    await system.set_stock(product, 5)
    await system.restart("inventory", FAIL_PRODUCT_IDS=f"FAIL,{product}")
    try:
        await system.post_order({"orderId": order_id, "productId": product, "quantity": 2})
        await dead_letters_of(raw, system, order_id)
        listed = dlt_command(system, "list", "order-events", "--limit", "10000")
        assert order_id in {(m["body"] or {}).get("orderId") for m in listed if isinstance(m["body"], dict)}
    finally:
        await system.restart("inventory")

    replayed = dlt_command(system, "replay", "order-events", "--limit", "10000")
    again = dlt_command(system, "replay", "order-events", "--limit", "10000")

    ours = [m for m in replayed if isinstance(m["body"], dict) and m["body"].get("orderId") == order_id]
    assert len(ours) == 1
    # replay stops at what was dead-lettered when it started, even if replayed messages fail again
    bodies = [json.dumps(m["body"], sort_keys=True) + m["headers"].get("x-consumer", "") for m in replayed]
    assert len(bodies) == len(set(bodies))
    assert not [m for m in again if isinstance(m["body"], dict) and m["body"].get("orderId") == order_id]
    await system.wait_status(order_id, {"RESERVED", "CONFIRMED"})
    assert await system.stock(product) == 3


async def test_burst_of_mixed_orders_loses_nothing(system: System, raw: RawClient) -> None:
    product = uid("P")
    await system.set_stock(product, 1000)
    bodies = [
        {"orderId": uid("burst"), "productId": "FAIL" if i % 4 == 0 else product, "quantity": 1} for i in range(40)
    ]

    await asyncio.gather(*(system.post_order(b) for b in bodies))

    failing = {b["orderId"] for b in bodies if b["productId"] == "FAIL"}
    healthy = [b["orderId"] for b in bodies if b["productId"] != "FAIL"]
    await asyncio.gather(*(system.wait_status(i, {"CONFIRMED"}, timeout=60) for i in healthy))

    async def dead() -> list[str]:
        return [m.order_id() for m in await raw.dead_letters(system.channel("order-events")) if m.order_id() in failing]

    lettered = await eventually(
        dead, lambda ids: set(ids) == failing, timeout=60, what="every failing order dead-lettered"
    )
    assert sorted(lettered) == sorted(failing)  # each exactly once
    assert await system.stock(product) == 1000 - len(healthy)


async def test_dead_letter_listener_reports_without_taking_it_off_the_dlt(system: System, raw: RawClient) -> None:
    order_id = uid("fail")
    await system.post_order({"orderId": order_id, "productId": "FAIL", "quantity": 1})

    async def seen() -> list[dict]:
        r = await system.http.get(
            system.url("notification", "/dead-letters?channel=order-events.DLT&limit=1000"),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},  # an admin route
        )
        assert r.status_code == 200, r.text
        return [d for d in r.json() if order_id in d["body"]]

    [letter] = await eventually(seen, lambda found: len(found) == 1, what="listener saw the dead letter")
    assert letter["headers"]["x-consumer"] == "inventory-service"
    assert letter["headers"]["x-attempts"] == "3"
    lines = [line for _, line in system.services["notification"].log_lines("DLT received failed message:")]
    assert any(order_id in line for line in lines)
    assert [m for m in await raw.dead_letters(system.channel("order-events")) if m.order_id() == order_id]
