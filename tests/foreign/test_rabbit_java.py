"""RabbitMQ: the RabbitMQ Java client (com.rabbitmq:amqp-client 5.38, not aio-pika) publishes to our
`order-events` exchange and reads our `order-events.DLT` queue with basic.get."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.foreign import clients
from tests.foreign.conftest import only_on
from tests.support.system import System, eventually, uid

pytestmark = [pytest.mark.foreign, only_on("rabbit")]
AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"  # the Java client reads a bare "/" as the vhost ""


async def java_publish(exchange: str, body: str, *headers: str) -> None:
    """One persistent message, routing key = event type (docs/contract.md), confirmed by the broker."""
    done = await clients.run(
        clients.java_command(
            "rabbit-publish",
            f"--uri={AMQP_URL}",
            f"--exchange={exchange}",
            "--routing-key=OrderCreated",
            f"--body={body}",
            *(f"--header={h}" for h in headers),
        )
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line["event"] for line in done.lines()] == ["published"], done.stdout


async def java_get(queue: str) -> list[dict[str, Any]]:
    """Every message of `queue`, read with basic.get and put back."""
    done = await clients.run(clients.java_command("rabbit-get", f"--uri={AMQP_URL}", f"--queue={queue}"))
    assert done.returncode == 0, done.stderr[-3000:]
    return [line for line in done.lines() if line["event"] == "message"]


async def test_the_java_client_publishes_an_order_that_the_order_flow_handles(system: System) -> None:
    product, order_id = uid("P"), uid("java")
    await system.set_stock(product, 10)
    body = json.dumps({"orderId": order_id, "productId": product, "quantity": 2})

    await java_publish(system.channel("order-events"), body, f"order-id:{order_id}", "event-type:OrderCreated")

    await eventually(
        lambda: system.stock(product), lambda s: s == 8, timeout=60, what="the Java client's order reserved"
    )
    await eventually(
        lambda: asyncio.sleep(0, system.delivery_lines("inventory", "order-events", order_id, "handled")),
        lambda lines: len(lines) == 1,
        what="one handled delivery",
    )


async def test_a_poison_message_of_the_java_client_is_read_back_from_our_dlt_queue(system: System) -> None:
    poison = f"not json {uid()}"
    await java_publish(system.channel("order-events"), poison)

    def ours(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [m for m in messages if m["body"] == poison and m["headers"].get("x-consumer") == "inventory-service"]

    messages = await eventually(
        lambda: java_get(system.channel("order-events.DLT")),
        lambda found: len(ours(found)) == 1,
        timeout=60,
        interval=0.5,
        what="the poison message on the DLT queue, read by the Java client",
    )
    [letter] = ours(messages)
    headers = letter["headers"]
    assert letter["exchange"] == system.channel("order-events.DLT")
    assert headers["x-original-destination"] == system.channel("order-events")
    assert headers["x-attempts"] == "1"
    assert headers["x-exception-type"]
    assert headers["x-exception-message"]
    assert headers["x-failed-at"].endswith("Z")
