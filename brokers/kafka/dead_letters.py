"""`<channel>.DLT` topics: a listener group per consumer, listing, and replay."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faststream import AckPolicy

from brokers.engine.faststream import dead_letter_endpoint, decode_raw
from brokers.foreign_headers import application_headers
from brokers.kafka.clients import partitions_of
from brokers.kafka.connection import GROUP_OPTIONS
from brokers.kafka.parsing import lenient_parser
from brokers.kafka.records import dead_letter_of
from brokers.model import dead_letter_channel

if TYPE_CHECKING:
    from brokers.interface import DeadLetterHandler
    from brokers.kafka.connection import KafkaConnection
    from brokers.model import DeadLetter

REPLAY_GROUP = "switchboard-dlt-replay"
Letters = list["DeadLetter"]
Records = list[Any]


class KafkaDeadLetters:
    """`brokers.interface.DeadLetters` on Kafka."""

    def __init__(self, conn: KafkaConnection) -> None:
        self._conn = conn

    def listen(self, channel: str, consumer: str, handler: DeadLetterHandler) -> None:
        dlt = dead_letter_channel(channel)
        self._conn.broker.subscriber(
            dlt,
            group_id=self._conn.group(consumer),
            **GROUP_OPTIONS,
            ack_policy=AckPolicy.ACK,
            parser=lenient_parser,
            decoder=decode_raw,
            title=f"{dlt}:{consumer}",
            description=f"{consumer} reports every dead letter of {channel}.",
        )(dead_letter_endpoint(channel, handler))

    async def list(self, channel: str, limit: int) -> Letters:
        consumer, records = await self._read_dlt(channel, None, limit)
        await consumer.stop()
        return [dead_letter_of(r) for r in records]

    async def replay(self, channel: str, limit: int) -> Letters:
        consumer, records = await self._read_dlt(channel, REPLAY_GROUP, limit)
        try:
            letters = [dead_letter_of(r) for r in records]
            producer = await self._conn.sender.producer()
            for letter in letters:  # the exact bytes: value, key, application headers (`foreign_headers`)
                kept = application_headers(letter.native_headers)
                await (await producer.send(letter.original_destination, letter.body, key=letter.key, headers=kept))
            done: dict[TopicPartition, int] = {}
            for record in records:
                tp = TopicPartition(record.topic, record.partition)
                done[tp] = max(done.get(tp, 0), record.offset + 1)
            if done:
                await consumer.commit(done)
        finally:
            await consumer.stop()
        return letters

    async def _read_dlt(self, channel: str, group: str | None, limit: int) -> tuple[AIOKafkaConsumer, Records]:
        """Records of `<channel>.DLT` up to its end offsets *at the start* (and `limit`): a replay
        whose messages fail again must not pick up its own new dead letters."""
        dlt = dead_letter_channel(channel)
        consumer = AIOKafkaConsumer(
            dlt,
            bootstrap_servers=self._conn.bootstrap_servers,
            **self._conn.security,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            partitions = await partitions_of(await self._conn.admin_clients.admin(), dlt)
        except BaseException:
            await consumer.stop()
            raise
        tps = [TopicPartition(dlt, p) for p in partitions or ()]
        ends = await consumer.end_offsets(tps) if tps else {}
        records: Records = []
        deadline = time.monotonic() + 10
        while len(records) < limit and time.monotonic() < deadline and any(ends.values()):
            batch = await consumer.getmany(timeout_ms=300, max_records=limit - len(records))
            for tp, recs in batch.items():
                records.extend(r for r in recs if r.offset < ends[tp])
            assigned = consumer.assignment()
            if assigned and all([await consumer.position(tp) >= ends.get(tp, 0) for tp in assigned]):
                break
        return consumer, records[:limit]
