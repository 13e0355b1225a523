"""What goes on the wire: addressing and properties of a persistent publish, and the retried or
dead-lettered copies of a delivery, whose headers must fit one content header frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pamqp import encode
from pamqp.commands import Basic

from brokers.fitting import fit
from brokers.model import EVENT_ID_HEADER, EVENT_TYPE_HEADER, Outgoing

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from brokers.model import Delivery

PERSISTENT = 2
"""AMQP delivery mode of a message the broker writes to disk."""
FRAME_MAX = 131072
"""AMQP frame size RabbitMQ negotiates by default; the connection's own value is used when known."""
HEADER_FRAME_ALLOWANCE = 1024
"""Bytes of a content header frame besides the headers table: frame envelope, body size, flags and
the other properties (content type, ids, timestamp, delivery mode)."""


@dataclass(frozen=True, slots=True)
class Copy(Outgoing):
    """A retried or dead-lettered copy of a delivery: keeps its headers, content type and message
    id as they were; `to_queue`: `channel` names a queue (a retry's delay queue), reached through
    the default exchange, instead of an exchange."""

    content_type: str | None = None
    message_id: str | None = None
    to_queue: bool = False

    @classmethod
    def of(cls, delivery: Delivery, channel: str, headers: dict[str, Any], *, to_queue: bool = False) -> Copy:
        msg = delivery.native
        key = text(headers.get("order-id", ""))
        return cls(channel, delivery.body, key, headers, msg.content_type, msg.message_id, to_queue)


def addressed(m: Outgoing, now: datetime) -> tuple[str, str, Basic.Properties]:
    """Exchange, routing key and properties of a persistent publish of `m`: an outbox event goes
    to the channel's exchange, a `Copy` to its delay queue or dead-letter exchange."""
    if isinstance(m, Copy):
        exchange, key = ("", m.channel) if m.to_queue else (m.channel, routing_key(m.headers))
        content_type, message_id, headers = m.content_type, m.message_id, m.headers
    else:
        exchange, key = m.channel, routing_key(m.headers)
        content_type, message_id, headers = "application/json", None, {**m.headers, "order-id": m.key}
    properties = Basic.Properties(
        content_type=content_type,
        delivery_mode=PERSISTENT,
        correlation_id=text(m.headers.get(EVENT_ID_HEADER) or "") or None,
        message_id=message_id,
        timestamp=now,
        headers=cast("dict[str, Any]", headers),  # text values: valid AMQP field values
    )
    return exchange, key, properties


def fitted(headers: dict[str, Any], ours: set[str], frame_max: int) -> dict[str, Any]:
    """`headers` made to fit one content header frame (`brokers.fitting`, no body spill: RabbitMQ's
    `max_message_size` counts the body only, and a copy's body is the original's, which fitted)."""
    limit = (frame_max or FRAME_MAX) - HEADER_FRAME_ALLOWANCE
    return fit(b"", headers, limit=limit, size=header_table_size, envelope=ours).headers


def header_table_size(body: bytes, headers: Mapping[str, Any]) -> int:  # noqa: ARG001 - the body has its own frames
    """Encoded size of `headers` as an AMQP field table (a value pamqp cannot encode: its text's size)."""
    try:
        return len(encode.field_table(dict(headers)))
    except (TypeError, ValueError, AttributeError):
        return sum(len(str(k).encode()) + len(str(v).encode()) + 6 for k, v in headers.items())


def routing_key(headers: Mapping[str, Any]) -> str:
    """The exchange fans out whatever the key; the event type makes it informative for tools
    that show routing keys, and stays low-cardinality (never the orderId)."""
    return cast("str", headers.get(EVENT_TYPE_HEADER, ""))


def carried(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Headers a retried or dead-lettered copy keeps: RabbitMQ's own death records stay behind."""
    return {k: v for k, v in headers.items() if not k.startswith(("x-death", "x-first-death", "x-last-death"))}


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
