"""What flows through a transport: messages, subscriptions, deliveries, dead letters, the retry
policy and the envelope headers every broker writes (docs/contract.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from brokers.foreign_headers import envelope, is_bookkeeping, shown, shown_headers

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

DLT_SUFFIX = ".DLT"
ATTEMPTS_HEADER = "x-attempts"
EVENT_ID_HEADER = "event-id"
EVENT_TYPE_HEADER = "event-type"
"""Set by publishers to the event's id; brokers with publish-side dedup use it."""
H_ORIGINAL_DESTINATION = "x-original-destination"
H_CONSUMER = "x-consumer"
H_EXCEPTION_TYPE = "x-exception-type"
H_EXCEPTION_MESSAGE = "x-exception-message"
H_FAILED_AT = "x-failed-at"
REASON_EXHAUSTED = "exhausted"
REASON_POISON = "poison"
MAX_EXCEPTION_MESSAGE = 1000
LAG_REFRESH_S = 1.0
CHANNEL_CHECK_S = 2.0
"""`consumed_channels_available` asks the broker at most this often (/ready may be polled often)."""
BATCH_MAX = 256
"""Most messages handled in one batch (one store transaction, one acknowledgement round)."""
MAX_UNSETTLED_BATCHES = 8
BATCH_LINGER_S = 0.002
"""A batch that starts with fewer than LINGER_BELOW messages waits this long before it runs
(as Kafka producers linger to fill a batch): concurrent submissions join it, and since the
subscription reads nothing meanwhile, what arrives waits in the client (or the RabbitMQ
intake) and makes the next batch that much bigger. At moderate rates each message would
otherwise be a batch of its own, paying alone for a store transaction, an acknowledgement
and a relay round; under load batches start full and never wait."""
LINGER_BELOW = 16
"""Below this many messages (a batch) or events (a relay round) the work is small enough to
wait for company: the outbox relay lingers by the same measure."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for `Transport.publish_batch`: `channel` is the name on the broker."""

    channel: str
    body: bytes
    key: str
    headers: dict[str, str]


class NonRetryableError(Exception):
    """Raised by a handler for a failure that no redelivery can fix: dead-lettered at once."""


def dead_letter_channel(channel: str) -> str:
    return channel + DLT_SUFFIX


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Observability:
    """What a transport reports to: FastStream's Prometheus metrics and OpenTelemetry spans."""

    registry: CollectorRegistry
    app_name: str
    tracer_provider: TracerProvider | None = None
    """Records and exports spans (FastStream's and ours); None: only the W3C context travels."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed message is redelivered (see docs/contract.md)."""

    max_attempts: int = 3
    delay_ms: int = 2000
    multiplier: float = 1.0

    def delay_ms_before(self, attempt: int) -> int:
        """Milliseconds to wait before delivery `attempt` (2 ≤ attempt ≤ max_attempts)."""
        return round(self.delay_ms * self.multiplier ** (attempt - 2))

    def retry_delays_ms(self) -> list[int]:
        """The distinct delays the policy can ask for, in attempt order (retry tiers)."""
        delays = [self.delay_ms_before(n) for n in range(2, self.max_attempts + 1)]
        return list(dict.fromkeys(delays))


Handler = Callable[[Any], Awaitable[None]]
DeadLetterHandler = Callable[["DeadLetter"], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    """One consumer's handler on one channel.

    `model` is the type the message body is validated into before `handler` runs
    (a pydantic model or an annotated union); it also documents the channel in AsyncAPI.
    `batch_scope()` is entered around each batch (the service's store transaction);
    its exit must make the effects of the batch's handlers durable, or raise.
    """

    channel: str
    consumer: str
    handler: Handler
    model: Any
    description: str = ""
    batch_scope: Callable[[], AbstractAsyncContextManager[Any]] = field(default=nullcontext, compare=False)

    @property
    def dead_letter_channel(self) -> str:
        return dead_letter_channel(self.channel)

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.model)


@dataclass(eq=False)
class Delivery:
    """One received message of a batch, as the shared policy sees it."""

    body: bytes
    headers: Mapping[str, Any]
    attempt: int
    """Which delivery (1-based) of this message this is."""
    native: Any
    """The broker's own handle (record, incoming message), for its settle/retry moves."""
    settled: bool = False
    """Set by a broker move that acknowledged or released the message itself (NATS nak)."""


@dataclass(eq=False)
class Failure:
    """A delivery whose handler raised (or that could not be decoded), for the failure policy."""

    delivery: Delivery
    exc: Exception
    described: str
    """The message as its log lines name it (`_describe`)."""


@dataclass
class DeadLetter:
    """A dead-lettered message as read back from a DLT (for listing and replay)."""

    channel: str
    body: bytes
    headers: dict[str, str]
    position: str = ""
    raw_headers: tuple[tuple[str, Any], ...] | None = None
    """The headers as the broker gave them (Kafka bytes, AMQP values), in order and with repeated
    names; None when `headers` are those (NATS). Listing shows them, replay keeps them exactly."""
    key: bytes | None = None
    """The Kafka record key."""

    @property
    def native_headers(self) -> list[tuple[str, Any]]:
        return list(self.raw_headers) if self.raw_headers is not None else list(self.headers.items())

    @property
    def envelope(self) -> dict[str, Any]:
        """Our envelope's fields, from whichever framework dead-lettered it (`brokers.foreign_headers`)."""
        return envelope(dict(self.native_headers))

    @property
    def original_destination(self) -> str:
        return self.envelope["originalDestination"] or self.channel.removesuffix(DLT_SUFFIX)

    def as_dict(self) -> dict[str, Any]:
        try:
            body: Any = json.loads(self.body)
        except ValueError:
            body = shown(self.body)  # text, or `base64:` when not UTF-8
        shown_key = {} if self.key is None else {"key": shown(self.key)}
        return {
            "channel": self.channel,
            "position": self.position,
            **shown_key,
            "envelope": self.envelope,
            "headers": shown_headers(self.native_headers),
            "body": body,
        }


def replay_headers(letter: DeadLetter) -> dict[str, str]:
    """Headers a replayed message carries: the application's, without the retry and dead-letter
    bookkeeping of any known framework (`foreign_headers.is_bookkeeping`: our envelope, attempt
    count and dedup id, Spring Kafka's, RabbitMQ's, `Nats-*`); trace context travels on."""
    return {k: v for k, v in letter.headers.items() if not is_bookkeeping(k)}


def is_poison(exc: BaseException) -> bool:
    """A failure that redelivery cannot fix: bad bytes, bad JSON, bad schema."""
    return isinstance(exc, ValidationError | NonRetryableError | UnicodeDecodeError | json.JSONDecodeError)


def dead_letter_headers(sub: Subscription, exc: BaseException, attempts: int) -> dict[str, str]:
    """The envelope every broker puts on a dead-lettered message (docs/contract.md)."""
    message = str(exc).replace("\r", " ").replace("\n", " ")[:MAX_EXCEPTION_MESSAGE]
    return {
        H_ORIGINAL_DESTINATION: sub.channel,
        H_CONSUMER: sub.consumer,
        H_EXCEPTION_TYPE: f"{type(exc).__module__}.{type(exc).__qualname__}",
        H_EXCEPTION_MESSAGE: message,
        ATTEMPTS_HEADER: str(attempts),
        H_FAILED_AT: now_rfc3339(),
    }


def attempt_header(headers: dict[str, Any], default: int = 1) -> int:
    try:
        return max(int(headers.get(ATTEMPTS_HEADER, default)), 1)
    except (TypeError, ValueError):
        return default


def due_in_seconds(due_at_ms: int) -> float:
    """Seconds until the wall-clock time `due_at_ms` (0 once it passed)."""
    return max(due_at_ms / 1000 - time.time(), 0.0)
