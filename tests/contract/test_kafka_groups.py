"""Kafka only: our consumers share a group with a consumer that offers only the `range`
assignor (the Java client's default offers range and cooperative-sticky, never round robin)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from tests.support.system import System, eventually, uid

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
