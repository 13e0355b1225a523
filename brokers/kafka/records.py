"""Records as the engine sees them and as they are copied: a batch's deliveries (a retry tier's
records that are not due yet wait, paused), retry tier topics, and the headers a copy carries."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from brokers.foreign_headers import shown
from brokers.kafka.parsing import header_bytes
from brokers.model import EVENT_ID_HEADER, DeadLetter, Delivery, attempt_header, due_in_seconds

if TYPE_CHECKING:
    from faststream.message import StreamMessage

    from brokers.model import Subscription

DUE_HEADER = "x-retry-due-at"
H_PARTITION = "x-original-partition"
H_OFFSET = "x-original-offset"
INTERNAL_HEADERS = ("content-type", "correlation_id", DUE_HEADER)
RETRY_WINDOW_S = 0.05
"""A paused retry tier sleeps at least this long, so records falling due together are fetched
and handled in one batch (each resume re-fetches from the rewound offset); retries may run
up to this much later than due."""


def retry_topic(sub: Subscription, delay_ms: int) -> str:
    return f"{sub.channel}.{sub.consumer}.retry-{delay_ms}ms"


async def deliveries(msg: StreamMessage[Any]) -> list[Delivery]:
    """The batch's records; on a retry tier, a partition whose head record is not due yet is
    paused and rewound to it, and its later records wait too (the tier is ordered by due time)."""
    consumer = msg.consumer  # type: ignore[attr-defined]
    found: list[Delivery] = []
    waiting: set[TopicPartition] = set()
    for record, headers in zip(msg.raw_message, msg.batch_headers, strict=True):  # type: ignore[attr-defined]
        tp = TopicPartition(record.topic, record.partition)
        if tp in waiting:
            continue
        due_at = headers.get(DUE_HEADER)
        wait = due_in_seconds(int(due_at)) if due_at else 0.0
        if wait > 0:
            waiting.add(tp)
            consumer.pause(tp)
            consumer.seek(tp, record.offset)
            asyncio.get_running_loop().call_later(max(wait, RETRY_WINDOW_S), _resume, consumer, tp)
            continue
        found.append(Delivery(record.value or b"", headers, attempt_header(headers), (consumer, record)))
    return found


def _resume(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
    if tp in consumer.assignment():
        consumer.resume(tp)


def carried_headers(delivery: Delivery) -> dict[str, str]:
    """The headers a retry copy or dead letter of the record carries, with its source position."""
    _, record = delivery.native
    headers = {k: v for k, v in delivery.headers.items() if k not in INTERNAL_HEADERS}
    headers.setdefault(H_PARTITION, str(record.partition))
    headers.setdefault(H_OFFSET, str(record.offset))
    return headers


def key_of(delivery: Delivery) -> str:
    """The record's key as `Outgoing.key` ("" for a record without one: it is sent without one)."""
    _, record = delivery.native
    return record.key.decode(errors="replace") if record.key else ""


def record_headers(headers: dict[str, str]) -> list[tuple[str, bytes]]:
    """The headers FastStream's `publish` would write: a content type, the correlation id."""
    carried = {"content-type": "application/json", "correlation_id": headers.get(EVENT_ID_HEADER, ""), **headers}
    return [(name, header_bytes(value)) for name, value in carried.items()]


def dead_letter_of(record: Any) -> DeadLetter:
    """The record as a dead letter: header values as bytes (`raw_headers`) and shown losslessly as text."""
    raw = tuple((k, bytes(v or b"")) for k, v in (record.headers or ()))
    headers = {k: str(shown(v)) for k, v in raw}
    return DeadLetter(record.topic, record.value, headers, f"{record.partition}:{record.offset}", raw, record.key)
