"""Consumer lag: end offset − committed offset of a group, summed over the topic's partitions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiokafka import TopicPartition

from brokers.kafka.clients import partitions_of

if TYPE_CHECKING:
    from brokers.kafka.connection import KafkaConnection


class KafkaLag:
    """`brokers.interface.Lag` on Kafka."""

    def __init__(self, conn: KafkaConnection) -> None:
        self._conn = conn

    async def consumer_lag(self, channel: str, consumer: str) -> int | None:
        topic, group = channel, self._conn.group(consumer)
        offsets, admin = await self._conn.admin_clients.clients()
        ids = await partitions_of(admin, topic)
        if not ids:
            return None
        tps = [TopicPartition(topic, p) for p in ids]
        ends = await offsets.end_offsets(tps)
        starts = await offsets.beginning_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        waiting = 0
        for tp in tps:
            meta = committed.get(tp)
            position = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
            waiting += max(ends[tp] - position, 0)
        return waiting

    def consuming(self) -> bool:
        """False while a subscriber is out of its consumer group (`brokers.kafka.groups`)."""
        return self._conn.group_watch.joined
