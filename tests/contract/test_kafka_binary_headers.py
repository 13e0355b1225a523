"""Kafka only: a record whose header values are not UTF-8 (any foreign producer may send one) is
handled like any other, and dead-lettered with its header bytes unchanged."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from tests.support.system import System, eventually, uid

pytestmark = pytest.mark.contract
KAFKA = "localhost:9092"
BINARY = ("x-app-bin", bytes([0xFF, 0x00, 0xFE, 0x01]))
MARKED_TEXT = ("x-app-text", b"base64:not-ours")


async def test_records_with_binary_headers_are_handled_and_dead_lettered_byte_for_byte(system: System) -> None:
    if system.broker != "kafka":
        pytest.skip("Kafka record headers are bytes")
    product, failing = uid("P"), uid("binhdr")
    await system.set_stock(product, 5)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA)
    await producer.start()
    try:
        for order_id, product_id in ((uid("binhdr"), product), (failing, "FAIL")):
            body = json.dumps({"orderId": order_id, "productId": product_id, "quantity": 1}).encode()
            await producer.send_and_wait(
                system.channel("order-events"), body, key=order_id.encode(), headers=[BINARY, MARKED_TEXT]
            )
    finally:
        await producer.stop()
    await eventually(lambda: system.stock(product), lambda s: s == 4, timeout=60, what="the order reserved")

    async def dead_letter() -> list[list[tuple[str, bytes]]]:
        return [r.headers for r in await _records(system.channel("order-events.DLT")) if r.key == failing.encode()]

    (headers,) = await eventually(dead_letter, lambda found: len(found) == 1, timeout=90, what="the dead letter")
    found = dict(headers)
    assert found[BINARY[0]] == BINARY[1]
    assert found[MARKED_TEXT[0]] == MARKED_TEXT[1]
    assert found["x-attempts"] == b"3"


async def _records(topic: str) -> list[ConsumerRecord[Any, Any]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # the DLT may have just been created (as tests/support/raw.py)
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[ConsumerRecord[Any, Any]] = []
        async with asyncio.timeout(20):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(records)
        return out
    finally:
        await consumer.stop()
