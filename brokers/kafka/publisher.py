"""Publishing: batches with our own idempotent producer, single messages through FastStream's
publisher (which records the publish spans)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from brokers.engine.publishing import confirmations
from brokers.kafka.records import record_headers
from brokers.model import EVENT_ID_HEADER

if TYPE_CHECKING:
    from collections.abc import Sequence

    from brokers.kafka.connection import KafkaConnection
    from brokers.model import Outgoing


class KafkaPublisher:
    """`brokers.interface.Publisher` on Kafka: `acks=all`, idempotent, keyed by `Outgoing.key`."""

    def __init__(self, conn: KafkaConnection) -> None:
        self._conn = conn

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        sender = self._conn.sender
        producer = await sender.producer()
        sends: list[Any] = []
        for m in messages:  # in order: one key's records reach its partition's batch in order
            try:
                sends.append(
                    await producer.send(
                        m.channel, m.body, key=m.key.encode() if m.key else None, headers=record_headers(m.headers)
                    )
                )
            except Exception as exc:  # noqa: BLE001 - reported as this message's outcome
                sends.append(exc)
        # no timeout of ours: a send we stopped waiting for stays in aiokafka's batch and would
        # reach the topic next to the outbox's re-send; aiokafka fails it once it expires
        outcomes = await confirmations(sends, timeout_s=None)
        await sender.replace_if_broken(outcomes)
        return outcomes

    async def publish(self, message: Outgoing) -> None:
        await self._conn.broker.publish(
            message.body,
            message.channel,
            key=message.key.encode() if message.key else None,
            headers=message.headers,
            correlation_id=message.headers.get(EVENT_ID_HEADER),
        )

    def destination_label(self, message: Outgoing) -> str:
        return message.channel
