"""Dead-letter headers of every framework the DLT tools know: ours, Spring Kafka's, RabbitMQ's.

`shown(value)` renders a header value for JSON without loss: valid UTF-8 as text (JSON escapes
control characters), anything else, and text that itself starts with the marker, as
`base64:<standard base64 of the bytes>`.
`envelope(headers)` maps whichever framework's dead-letter headers a message carries onto one
set of fields (docs/contract.md, "Dead-letter tools"). `is_bookkeeping(name)` names the retry
and dead-letter headers a replay drops; every other header is the application's and is kept.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

BASE64_MARKER = "base64:"

SOURCE_SWITCHBOARD = "switchboard"
SOURCE_SPRING_KAFKA = "spring-kafka"
SOURCE_RABBITMQ = "rabbitmq"

# ours (brokers.model, brokers.kafka)
OURS_EXACT = frozenset(
    {
        "x-original-destination",
        "x-original-partition",
        "x-original-offset",
        "x-consumer",
        "x-exception-type",
        "x-exception-message",
        "x-attempts",
        "x-failed-at",
        "x-retry-due-at",
        "event-id",
        "correlation_id",
    }
)
OURS_PREFIXES = ("x-original-", "x-exception-", "x-body-", "x-envelope-")
"""`x-body-*` / `x-envelope-*`: a dead letter whose body or envelope was spilled to the side store."""
# Spring Kafka: KafkaHeaders (prefix `kafka_`, e.g. `kafka_dlt-original-topic`) and RetryTopicHeaders
SPRING_PREFIXES = ("kafka_", "retry_topic-")
SPRING_TOPIC = "kafka_dlt-original-topic"
SPRING_PARTITION = "kafka_dlt-original-partition"
SPRING_OFFSET = "kafka_dlt-original-offset"
SPRING_TIMESTAMP = "kafka_dlt-original-timestamp"
SPRING_GROUP = "kafka_dlt-original-consumer-group"
SPRING_EXCEPTION = "kafka_dlt-exception-fqcn"
SPRING_CAUSE = "kafka_dlt-exception-cause-fqcn"
SPRING_MESSAGE = "kafka_dlt-exception-message"
SPRING_KEY_EXCEPTION = "kafka_dlt-key-exception-fqcn"
SPRING_KEY_MESSAGE = "kafka_dlt-key-exception-message"
SPRING_ATTEMPTS = "retry_topic-attempts"
SPRING_DELIVERY_ATTEMPT = "kafka_deliveryAttempt"
# RabbitMQ's dead-lettering records, and the quorum queues' redelivery count
RABBIT_EXACT = frozenset({"x-death", "x-delivery-count"})
RABBIT_PREFIXES = ("x-first-death-", "x-last-death-")
# NATS server headers (`Nats-Msg-Id` would make JetStream drop the replay as a duplicate)
NATS_PREFIXES = ("Nats-",)

ENVELOPE_FIELDS = (
    "source",
    "originalDestination",
    "originalPartition",
    "originalOffset",
    "originalTimestamp",
    "consumer",
    "exceptionType",
    "exceptionCauseType",
    "exceptionMessage",
    "attempts",
    "failedAt",
)


def shown(value: Any) -> Any:
    """A header value as JSON, losslessly (module docstring). AMQP tables and arrays keep their
    structure, numbers and booleans stay JSON numbers and booleans, timestamps become RFC 3339."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return _shown_text(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return BASE64_MARKER + base64.b64encode(raw).decode("ascii")
    if isinstance(value, str):
        return _shown_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime):
        return _rfc3339(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): shown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shown(v) for v in value]
    return _shown_text(str(value))


def _shown_text(text: str) -> str:
    if text.startswith(BASE64_MARKER):  # would read as encoded bytes: encode it too
        return BASE64_MARKER + base64.b64encode(text.encode("utf-8")).decode("ascii")
    return text


def unshown(value: str) -> bytes:
    """The bytes a `shown` text or `base64:` value stands for (the inverse of `shown`)."""
    if value.startswith(BASE64_MARKER):
        try:
            return base64.b64decode(value[len(BASE64_MARKER) :], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"invalid base64 header value: {value!r}") from exc
    return value.encode("utf-8")


def shown_headers(headers: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """`shown` of each header (a name that occurs more than once shows its last value)."""
    return {str(name): shown(value) for name, value in headers}


def is_bookkeeping(name: str) -> bool:
    """A retry or dead-letter header of a known framework (ours, Spring Kafka's, RabbitMQ's,
    NATS's): dropped on replay, so the replayed message starts afresh everywhere."""
    return (
        name in OURS_EXACT
        or name in RABBIT_EXACT
        or name.startswith(OURS_PREFIXES + SPRING_PREFIXES + RABBIT_PREFIXES + NATS_PREFIXES)
    )


def application_headers(headers: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The headers a replay keeps, values untouched and in order (repeated names included)."""
    return [(name, value) for name, value in headers if not is_bookkeeping(name)]


def amqp_value(value: Any) -> Any:
    """A header value as the AMQP client can send it again: bytes (a string that was not UTF-8,
    as the client decodes it) become a byte array, the same bytes; tables and arrays likewise."""
    if isinstance(value, bytes | memoryview):
        return bytearray(value)
    if isinstance(value, Mapping):
        return {k: amqp_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [amqp_value(v) for v in value]
    return value


def envelope(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The dead-letter fields of `headers` (raw values: bytes, text or AMQP values), from ours
    (`x-*`), else Spring Kafka's (`kafka_dlt-*`, `retry_topic-attempts`), else RabbitMQ's
    (`x-death`, `x-first-death-*`); `source` names the framework, None when none matched."""
    fields: dict[str, Any] = dict.fromkeys(ENVELOPE_FIELDS)
    if any(name in headers for name in ("x-original-destination", "x-consumer", "x-exception-type")):
        fields.update(
            source=SOURCE_SWITCHBOARD,
            originalDestination=_text(headers.get("x-original-destination")),
            originalPartition=_int(headers.get("x-original-partition")),
            originalOffset=_int(headers.get("x-original-offset")),
            consumer=_text(headers.get("x-consumer")),
            exceptionType=_text(headers.get("x-exception-type")),
            exceptionMessage=_text(headers.get("x-exception-message")),
            attempts=_int(headers.get("x-attempts")),
            failedAt=_text(headers.get("x-failed-at")),
        )
    elif any(name.startswith("kafka_dlt-") for name in headers):
        timestamp = _int(headers.get(SPRING_TIMESTAMP), 8)
        attempts = _spring_attempts(headers.get(SPRING_ATTEMPTS))
        fields.update(
            source=SOURCE_SPRING_KAFKA,
            originalDestination=_text(headers.get(SPRING_TOPIC)),
            originalPartition=_int(headers.get(SPRING_PARTITION), 4),
            originalOffset=_int(headers.get(SPRING_OFFSET), 8),
            originalTimestamp=None if timestamp is None else _rfc3339(datetime.fromtimestamp(timestamp / 1000, UTC)),
            consumer=_text(headers.get(SPRING_GROUP)),
            exceptionType=_text(headers.get(SPRING_EXCEPTION)) or _text(headers.get(SPRING_KEY_EXCEPTION)),
            exceptionCauseType=_text(headers.get(SPRING_CAUSE)),
            exceptionMessage=_text(headers.get(SPRING_MESSAGE)) or _text(headers.get(SPRING_KEY_MESSAGE)),
            attempts=attempts if attempts is not None else _int(headers.get(SPRING_DELIVERY_ATTEMPT), 4),
        )
    elif "x-death" in headers or "x-first-death-queue" in headers:
        fields.update(source=SOURCE_RABBITMQ, **_rabbit_death(headers))
    return fields


def _rabbit_death(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The first (most recent) `x-death` entry; `x-first-death-*` when there is none."""
    deaths = headers.get("x-death")
    death = deaths[0] if isinstance(deaths, list | tuple) and deaths and isinstance(deaths[0], Mapping) else None
    if death is None:
        queue = _text(headers.get("x-first-death-queue"))
        exchange = _text(headers.get("x-first-death-exchange"))
        return {
            "originalDestination": exchange or queue,
            "consumer": queue,
            "exceptionType": _text(headers.get("x-first-death-reason")),
        }
    keys = death.get("routing-keys")
    first_key = _text(keys[0]) if isinstance(keys, list | tuple) and keys else None
    when = death.get("time")
    return {
        "originalDestination": _text(death.get("exchange")) or first_key,
        "consumer": _text(death.get("queue")),
        "exceptionType": _text(death.get("reason")),
        "attempts": _int(death.get("count")),
        "failedAt": _rfc3339(when) if isinstance(when, datetime) else _text(when),
    }


def _spring_attempts(value: Any) -> int | None:
    """Deliveries made, from `retry_topic-attempts`: Spring writes the number of the attempt that
    would come next (a 4-byte int; one unsigned byte in early versions), so one less."""
    if isinstance(value, bytes | bytearray | memoryview) and len(value) == 1:
        return max(bytes(value)[0] - 1, 1)
    next_attempt = _int(value, 4)
    return None if next_attempt is None else max(next_attempt - 1, 1)


def _text(value: Any) -> str | None:
    """A header's text: UTF-8 bytes decoded, text as it is; None when absent, empty or binary."""
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if value is None or isinstance(value, Mapping | list | tuple):
        return None
    return str(value) or None


def _int(value: Any, width: int | None = None) -> int | None:
    """An integer header: decimal text, a number (AMQP), or with `width` exactly that many bytes
    big-endian (a Java int or long, as Spring Kafka writes them)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, bytes | bytearray | memoryview) and width and len(value) == width:
        return int.from_bytes(bytes(value), "big", signed=True)
    text = _text(value)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
