"""Kafka: a Spring Boot 3.5 / Spring Kafka application (tests/foreign/spring-kafka) shares our channels.

It publishes the tutorial's flat OrderEvent, consumes ours with Spring's default consumer
settings (default assignors) in our inventory's group, and dead-letters with Spring's own
DefaultErrorHandler + DeadLetterPublishingRecoverer onto our `<channel>.DLT`, which
`python -m brokers.dlt` lists and replays.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from services.events import foreign_event_id
from tests.foreign import clients
from tests.foreign.clients import JavaApp, kafka_end_offsets, kafka_records, with_key
from tests.foreign.conftest import only_on
from tests.support.system import System, eventually, uid

pytestmark = [pytest.mark.foreign, only_on("kafka")]

SPRING_EXCEPTION = "org.springframework.kafka.listener.ListenerExecutionFailedException"
APP_HEADERS = {"x-app-text": b"spring-app-header", "x-app-tenant": b"t-42"}
"""Headers of the application's own that Spring puts on the records it publishes."""
BINARY_HEADER = {"x-app-bin": bytes([0xFF, 0x00, 0xFE, 0x01])}


async def spring_publish(
    system: System, *events: dict[str, Any], headers: dict[str, bytes] | None = None
) -> list[dict[str, Any]]:
    """Publish `events` with the Spring app (key = orderId, `headers` on each); returns its `published` lines."""
    args = [f"--foreign.topic={system.channel('order-events')}", f"--foreign.events={json.dumps(list(events))}"]
    if headers:
        shown = {k: "base64:" + base64.b64encode(v).decode() for k, v in headers.items()}
        args.append(f"--foreign.headers={json.dumps(shown)}")
    done = await clients.run(clients.java_command("kafka-publish", *args))
    assert done.returncode == 0, done.stderr[-3000:]
    published = [line for line in done.lines() if line["event"] == "published"]
    assert [p["orderId"] for p in published] == [e["orderId"] for e in events], done.stdout
    return published


async def handled(system: System, order_id: str, count: int, timeout: float = 60.0) -> None:
    await eventually(
        lambda: asyncio.sleep(0, system.delivery_lines("inventory", "order-events", order_id, "handled")),
        lambda lines: len(lines) >= count,
        timeout=timeout,
        what=f"{count} handled deliveries of {order_id}",
    )
    assert len(system.delivery_lines("inventory", "order-events", order_id, "handled")) == count


async def test_spring_publishes_flat_order_events_that_the_inventory_reserves(system: System) -> None:
    product = uid("P")
    await system.set_stock(product, 10)
    orders = [uid("spring") for _ in range(3)]

    await spring_publish(system, *({"orderId": o, "productId": product, "quantity": 2} for o in orders))

    await eventually(lambda: system.stock(product), lambda s: s == 4, timeout=60, what="three flat events reserved")
    for order_id in orders:
        await handled(system, order_id, 1)


async def test_spring_publishes_the_tutorials_conceptual_event(system: System) -> None:
    a, b, order_id = uid("A"), uid("B"), uid("concept")
    await system.set_stock(a, 5)
    await system.set_stock(b, 5)

    await spring_publish(system, {"eventType": "OrderCreated", "orderId": order_id, "userId": "456", "items": [a, b]})

    async def stocks() -> tuple[int, int]:
        return await system.stock(a), await system.stock(b)

    await eventually(stocks, lambda s: s == (4, 4), timeout=60, what="one of each product reserved")
    [(_, line)] = system.delivery_lines("inventory", "order-events", order_id, "handled")
    assert "eventType=OrderCreated" in line


async def test_three_failing_attempts_of_a_spring_flat_event_carry_one_event_id(system: System) -> None:
    order_id = uid("flatfail")
    event = {"orderId": order_id, "productId": "FAIL", "quantity": 1}  # FAIL_PRODUCT_IDS: the inventory raises

    await spring_publish(system, event)

    lines = await eventually(
        lambda: asyncio.sleep(0, system.delivery_lines("inventory", "order-events", order_id)),
        lambda found: len(found) == 3,
        timeout=60,
        what="three attempts logged",
    )
    assert {line.split("eventId=", 1)[1].split()[0] for _, line in lines} == {foreign_event_id(event)}
    letters = await eventually(
        lambda: kafka_records(system.channel("order-events.DLT")),
        lambda records: any(
            dict(r.headers).get("x-consumer") == b"inventory-service" for r in with_key(records, order_id)
        ),
        timeout=30,
        what="our dead letter of the flat event",
    )
    [letter] = [r for r in with_key(letters, order_id) if dict(r.headers).get("x-consumer") == b"inventory-service"]
    assert json.loads(letter.value) == event
    assert dict(letter.headers)["x-attempts"] == b"3"


async def test_a_spring_consumer_shares_the_inventory_group_set_by_consumer_names(
    system: System, tmp_path: Path
) -> None:
    """CONSUMER_NAMES names the inventory's group; a Spring consumer with Spring's default assignors
    joins it: both get partitions of the channel and each event is handled by exactly one of them."""
    group = system.channel("inventory-group")  # a Kafka group id is `<ns>.<consumer name>` (docs/contract.md)
    await system.restart("inventory", CONSUMER_NAMES="inventory=inventory-group")
    spring = JavaApp(
        "kafka-consume",
        (f"--foreign.topic={system.channel('order-events')}", f"--foreign.group={group}"),
        tmp_path,
    ).start()
    try:
        await spring.wait_assigned(
            "consume",
            lambda parts: 0 < len(parts) < 3,
            what="the Spring member sharing the channel's 3 partitions with the inventory (CONSUMER_NAMES)",
        )
        product = uid("P")
        await system.set_stock(product, 100)
        orders = [(await system.post_order({"productId": product, "quantity": 1})).json()["orderId"] for _ in range(24)]

        async def accounted() -> tuple[dict[str, int], dict[str, int]]:
            consumed = [line["orderId"] for line in spring.lines("consumed")]
            ours = {o: len(system.delivery_lines("inventory", "order-events", o, "handled")) for o in orders}
            return {o: consumed.count(o) for o in orders}, ours

        by_spring, by_inventory = await eventually(
            accounted,
            lambda seen: all(seen[0][o] + seen[1][o] >= 1 for o in orders),
            timeout=90,
            what="every order consumed by the Spring member or handled by the inventory",
        )
        assert all(by_spring[o] + by_inventory[o] == 1 for o in orders), (by_spring, by_inventory)
        assert any(by_spring.values()), "the Spring member consumed none of the orders"
        assert any(by_inventory.values()), "the inventory handled none of the orders"
        assert len(spring.assignment("consume")) < 3
        spring_log = spring.stderr()
    finally:
        spring.stop()
        await system.restart("inventory")
    inventory_log = system.services["inventory"].log_path.read_text(errors="replace")
    for log in (spring_log, inventory_log):
        assert "InconsistentGroupProtocol" not in log
        assert "JoinGroup failed" not in log
    assert "Successfully joined group" in spring_log
    assert "protocol='range'" in spring_log  # the assignor both sides offer


async def test_spring_retries_and_dead_letters_on_our_dlt_which_our_tool_lists_and_replays(
    system: System, tmp_path: Path
) -> None:
    """Spring's DefaultErrorHandler retries a failing record twice, then DeadLetterPublishingRecoverer
    writes it to `<channel>.DLT` with Spring's binary `kafka_dlt-*` headers. `brokers.dlt list --json`
    shows every header losslessly and maps Spring's onto the envelope; `replay` republishes the
    original bytes, key and application headers, without Spring's bookkeeping."""
    topic, group = system.channel("order-events"), system.channel("spring-orders")
    product, order_id = uid("SPRINGFAIL"), uid("springdlt")
    await system.set_stock(product, 5)
    spring = JavaApp(
        "kafka-fail",
        (f"--foreign.topic={topic}", f"--foreign.group={group}", f"--foreign.fail-product={product}"),
        tmp_path,
    ).start()
    try:
        for listener in ("fail", "dlt"):
            await spring.wait_assigned(listener, lambda parts: len(parts) == 3, what=f"Spring's {listener} listener")
        [published] = await spring_publish(
            system, {"orderId": order_id, "productId": product, "quantity": 1}, headers=APP_HEADERS
        )
        await eventually(
            lambda: asyncio.sleep(0, spring.stdout()),
            lambda out: any(
                f'"orderId":"{order_id}"' in line
                for line in out.splitlines()
                if line.startswith("DLT received failed message: ")
            ),
            timeout=90,
            what="Spring's DLT listener receiving the dead letter",
        )
        attempts = [line["attempt"] for line in spring.lines("attempt") if line["orderId"] == order_id]
        assert attempts == [1, 2, 3]
    finally:
        spring.stop()  # before the replay, which Spring's listener would fail again
    await handled(system, order_id, 1)  # our inventory read the original record too (its own group)

    [record] = [r for r in with_key(await kafka_records(f"{topic}.DLT"), order_id) if _spring_dlt(r)]
    listed = await dlt_tool(system, "list")
    [letter] = [item for item in listed if _order_of(item) == order_id]
    assert letter["headers"] == {name: _shown(value) for name, value in record.headers}
    assert any(v.startswith("base64:") for v in letter["headers"].values())  # e.g. kafka_dlt-original-offset
    envelope = letter["envelope"]
    assert envelope["source"] == "spring-kafka"
    assert envelope["originalDestination"] == topic
    assert (envelope["originalPartition"], envelope["originalOffset"]) == (published["partition"], published["offset"])
    assert envelope["consumer"] == group
    assert envelope["exceptionType"] == SPRING_EXCEPTION
    assert envelope["exceptionCauseType"] == "java.lang.IllegalStateException"
    assert f"refuses order {order_id}" in envelope["exceptionMessage"]

    before = await kafka_end_offsets(topic)
    replayed = await dlt_tool(system, "replay")
    assert order_id in [_order_of(item) for item in replayed]
    [again] = with_key(await kafka_records(topic, since=before), order_id)
    assert again.value == record.value
    assert [(k, v) for k, v in again.headers if k in APP_HEADERS] == list(APP_HEADERS.items())
    assert not [k for k, _ in again.headers if k.startswith("kafka_")], again.headers
    await handled(system, order_id, 2)  # the replay reached our inventory; it reserved once
    assert await system.stock(product) == 4


def _spring_dlt(record: clients.KafkaRecord) -> bool:
    return any(name.startswith("kafka_dlt-") for name, _ in record.headers)


def _order_of(letter: dict[str, Any]) -> str | None:
    body = letter.get("body")
    return body.get("orderId") if isinstance(body, dict) else None


def _shown(value: bytes) -> str:
    """A header's JSON form per the contract: UTF-8 text as text, other bytes as `base64:<data>`."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode()
    return "base64:" + base64.b64encode(value).decode() if text.startswith("base64:") else text


async def dlt_tool(system: System, command: str) -> list[dict[str, Any]]:
    """`python -m brokers.dlt <command> order-events --json` on this system's namespace."""
    env = {"BROKER": system.broker, "CHANNEL_NAMESPACE": system.namespace, "PYTHONPATH": str(clients.ROOT)}
    done = await clients.run(
        [
            os.fspath(clients.ROOT / ".venv" / "bin" / "python"),
            "-m",
            "brokers.dlt",
            command,
            "order-events",
            "--json",
            "--limit",
            "1000",
        ],
        env=env,
    )
    assert done.returncode == 0, f"brokers.dlt {command} --json exited {done.returncode}: {done.stderr[-2000:]}"
    return done.lines()


async def test_with_flat_fields_the_spring_order_event_listener_reads_our_orders(
    system: System, tmp_path: Path
) -> None:
    """ORDER_EVENTS_FLAT_FIELDS=true: our single-item OrderCreated also carries productId and quantity,
    which the tutorial's Spring `OrderEvent` listener reads (Spring Boot's ObjectMapper ignores the rest)."""
    await system.restart("order", ORDER_EVENTS_FLAT_FIELDS="true")
    spring = JavaApp(
        "kafka-consume",
        (f"--foreign.topic={system.channel('order-events')}", f"--foreign.group={system.channel('spring-flat')}"),
        tmp_path,
    ).start()
    try:
        await spring.wait_assigned("consume", lambda parts: len(parts) == 3, what="the Spring listener's partitions")
        p, q = uid("P"), uid("Q")
        single: dict[str, Any] = {"orderId": uid("flat"), "productId": p, "quantity": 2}
        other: dict[str, Any] = {"orderId": uid("flat"), "items": [{"productId": q, "quantity": 3}]}
        two: dict[str, Any] = {
            "orderId": uid("two"),
            "items": [{"productId": p, "quantity": 1}, {"productId": q, "quantity": 1}],
        }
        for body in (single, other, two):
            assert (await system.post_order(body)).status_code == 202
        wanted = {single["orderId"], other["orderId"], two["orderId"]}

        async def read() -> dict[str, dict[str, Any]]:
            return {line["orderId"]: line for line in spring.lines("consumed") if line["orderId"] in wanted}

        seen = await eventually(read, lambda s: s.keys() == wanted, timeout=60, what="Spring reading our three orders")
    finally:
        spring.stop()
        await system.restart("order")
    assert (seen[single["orderId"]]["productId"], seen[single["orderId"]]["quantity"]) == (p, 2)
    assert (seen[other["orderId"]]["productId"], seen[other["orderId"]]["quantity"]) == (q, 3)
    assert (seen[two["orderId"]]["productId"], seen[two["orderId"]]["quantity"]) == (None, 0)  # two items: no flat copy


async def test_a_spring_record_with_a_binary_application_header_is_handled(system: System) -> None:
    """A header value that is not UTF-8 (Spring sends bytes as they are) does not stop our consumer."""
    product, order_id = uid("P"), uid("binhdr")
    await system.set_stock(product, 5)

    await spring_publish(system, {"orderId": order_id, "productId": product, "quantity": 1}, headers=BINARY_HEADER)

    await eventually(lambda: system.stock(product), lambda s: s == 4, timeout=10, what="the record reserved")
