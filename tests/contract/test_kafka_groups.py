"""Kafka only: our consumers share a group with a consumer that offers only the `range`
assignor (the Java client's default offers range and cooperative-sticky, never round robin)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from tests.support.system import System, eventually, metric_value, uid

pytestmark = pytest.mark.contract
KAFKA = "localhost:9092"


async def test_a_range_only_consumer_shares_the_inventory_group(system: System) -> None:
    if system.broker != "kafka":
        pytest.skip("Kafka consumer groups")
    topic = system.channel("order-events")
    foreign = AIOKafkaConsumer(
        topic,
        bootstrap_servers=KAFKA,
        group_id=f"{system.namespace}.inventory-service",
        partition_assignment_strategy=(RangePartitionAssignor,),
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    await foreign.start()
    try:
        # the join would fail with InconsistentGroupProtocol if no assignor were common
        assignment = await eventually(
            _assigned(foreign), lambda a: len(a) > 0, timeout=30, what="partitions for the foreign member"
        )
        partitions = foreign.partitions_for_topic(topic) or set()
        assert len(assignment) < len(partitions), "the group gave every partition to the foreign member"
        product = uid("P")
        await system.set_stock(product, 50)
        orders = [(await system.post_order({"productId": product, "quantity": 1})).json()["orderId"] for _ in range(12)]
    finally:
        await foreign.stop()  # leaves the group, committing nothing: its partitions come back to us
    for order_id in orders:
        await system.wait_status(order_id, {"CONFIRMED"}, timeout=60)


def _assigned(consumer: AIOKafkaConsumer) -> Callable[[], Awaitable[set[TopicPartition]]]:
    """Poll the consumer (records it fetches are not committed: they come back to the group)."""

    async def probe() -> set[TopicPartition]:
        await asyncio.wait_for(consumer.getmany(timeout_ms=200), 5)
        return set(consumer.assignment())

    return probe


async def test_an_inventory_evicted_while_a_foreign_member_took_the_group_says_so_and_rejoins(system: System) -> None:
    """The inventory is paused past its session timeout; meanwhile a member offering only `sticky`
    takes the group, so the inventory's rejoin fails (InconsistentGroupProtocol). It keeps running,
    answers /ready 503 and counts the failed joins; once the foreign member leaves it rejoins."""
    if system.broker != "kafka":
        pytest.skip("Kafka consumer groups")
    group = f"{system.namespace}.inventory-service"
    inventory = system.services["inventory"].proc
    assert inventory is not None
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    foreign = _sticky_member(system.channel("order-events"), group)
    os.kill(inventory.pid, signal.SIGSTOP)
    try:
        await eventually(_members(admin, group), lambda n: n == 0, timeout=60, what="the paused inventory evicted")
        await foreign.start()
        await eventually(_assigned(foreign), lambda a: len(a) > 0, timeout=30, what="partitions for the foreign member")
    finally:
        os.kill(inventory.pid, signal.SIGCONT)
    try:
        await eventually(_join_failures(system), lambda n: n >= 1, timeout=90, what="a counted failed join")
        ready = await system.http.get(system.url("inventory", "/ready"))
        assert ready.status_code == 503, ready.text
        assert ready.json()["channels"] is False, ready.text
        assert (await system.http.get(system.url("inventory", "/health"))).status_code == 200
    finally:
        await foreign.stop()
        await admin.close()
    await system.wait_ready("inventory", timeout=120)
    product = uid("P")
    await system.set_stock(product, 5)
    order_id = (await system.post_order({"productId": product, "quantity": 1})).json()["orderId"]
    await system.wait_status(order_id, {"CONFIRMED"}, timeout=60)


async def test_an_inventory_that_cannot_join_at_startup_exits_non_zero(system: System) -> None:
    """A group held by a member with no assignor in common: the inventory's start fails, and the
    process exits non-zero (for its supervisor to restart it) instead of idling."""
    if system.broker != "kafka":
        pytest.skip("Kafka consumer groups")
    system.stop("inventory")
    foreign = _sticky_member(system.channel("order-events"), f"{system.namespace}.inventory-service")
    await foreign.start()
    try:
        await eventually(_assigned(foreign), lambda a: len(a) > 0, timeout=30, what="partitions for the foreign member")
        service = system.services["inventory"]
        service.start()
        assert service.proc is not None
        proc = service.proc

        async def exit_code() -> int | None:
            return proc.poll()

        code = await eventually(exit_code, lambda c: c is not None, timeout=90, what="the inventory to exit")
        assert code != 0
        assert "InconsistentGroupProtocol" in service.log_path.read_text()
    finally:
        await foreign.stop()
        system.stop("inventory")
        await system.start("inventory")  # the later tests need it


def _sticky_member(topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=KAFKA,
        group_id=group,
        partition_assignment_strategy=(StickyPartitionAssignor,),
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )


def _members(admin: AIOKafkaAdminClient, group: str) -> Callable[[], Awaitable[int]]:
    async def probe() -> int:
        (response,) = await admin.describe_consumer_groups([group])
        return sum(len(g["members"]) for g in response.to_object()["groups"])

    return probe


def _join_failures(system: System) -> Callable[[], Awaitable[float]]:
    async def probe() -> float:
        proc = system.services["inventory"].proc
        if proc is not None and proc.poll() is not None:
            raise AssertionError("the inventory exited instead of retrying its join")
        try:
            text = await system.metrics("inventory")
        except httpx.HTTPError:
            return 0.0
        return metric_value(text, "consumer_group_join_failures_total", destination=system.channel("order-events"))

    return probe
