"""NATS message details: sizes against `max_payload`, dedup ids, delivery counts, pull statuses."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg as NatsMsg
from nats.errors import MaxPayloadError
from nats.js.api import Header

from brokers.model import EVENT_ID_HEADER, DeadLetter

if TYPE_CHECKING:
    from nats.aio.msg import Msg

MSG_ID_HEADER = "Nats-Msg-Id"
HEARTBEAT = "100"
NO_MESSAGES = "404"
V1_ACK_TOKENS = 9
V1_DELIVERED = 4
HDR_LINE = len(b"NATS/1.0\r\n\r\n")


def wire_size(body: bytes, headers: Any) -> int:
    """What the server compares with `max_payload`: the body plus the headers as nats-py encodes
    them (`NATS/1.0`, one `name: value` line each, a blank line)."""
    lines = sum(len(str(k).strip().encode()) + len(str(v).strip().encode()) + 4 for k, v in headers.items())
    return len(body) + (HDR_LINE + lines if headers else 0)


def check_size(nc: Any, body: bytes, headers: Any) -> None:
    """Refuse a publish the server would refuse: a message over `max_payload` (headers included,
    which nats-py does not count) makes the server close the connection, for good."""
    size, limit = wire_size(body, headers or {}), nc.max_payload
    if size > limit:
        raise MaxPayloadError(f"message of {size} bytes (headers included) exceeds max_payload {limit}")


def deduplicated(headers: dict[str, str]) -> dict[str, str]:
    """`headers` plus JetStream's message id (the event id): a re-sent event is stored once."""
    if EVENT_ID_HEADER in headers:
        return {**headers, MSG_ID_HEADER: headers[EVENT_ID_HEADER]}
    return headers


def delivery_count(msg: Any) -> int:
    """The server's delivery count, read from the ack subject (`$JS.ACK.<stream>.<consumer>.
    <delivered>.…`, or the longer v2 form) without building nats-py's whole `metadata`
    (a timestamp and three objects per message)."""
    tokens = (getattr(msg, "reply", None) or "").split(".")
    index = V1_DELIVERED if len(tokens) == V1_ACK_TOKENS else NatsMsg.Ack.NumDelivered
    try:
        return int(tokens[index]) if tokens[0] == "$JS" else 1
    except (IndexError, ValueError):  # in-memory test broker: no ack subject
        return 1


def status(message: Msg) -> str | None:
    """The JetStream status of a pull reply (`100` heartbeat, `404`, `408`, `409`), None for a message."""
    return message.headers.get(Header.STATUS) if message.headers else None


async def release(messages: list[Any]) -> None:
    """nak without delay: redelivered at once, to whoever pulls next (it counts as a delivery)."""
    for message in messages:
        with contextlib.suppress(Exception):  # connection closing: ack_wait releases it instead
            await message.nak()


def carried(headers: dict[str, Any]) -> dict[str, Any]:
    """Headers a dead-lettered copy keeps: not the server's own (`Nats-*`), which would dedup it."""
    return {k: v for k, v in headers.items() if not k.startswith("Nats-")}


def dead_letter_of(m: Any) -> DeadLetter:
    seq = getattr(getattr(m, "metadata", None), "sequence", None)
    return DeadLetter(m.subject, m.data, dict(m.headers or {}), str(getattr(seq, "stream", "")))
