"""The transport interface every broker module implements.

Contract of a `Transport` (proven for each broker by `tests/contract/`):

* **Channels.** A channel is a logical stream of JSON events. `publish(channel, …)`
  makes the body durable on the broker before it returns (Kafka `acks=all`,
  RabbitMQ publisher confirm of a persistent message, JetStream publish ack);
  `publish_batch(messages)` does so for many at once and reports each one's outcome.
  Kafka: a topic named like the channel, keyed by `key`; RabbitMQ: a durable topic
  exchange named like the channel; NATS: a subject named like the channel, kept in
  a JetStream stream.
* **Subscriptions.** `subscribe(Subscription)` delivers each message of the channel
  to the handler at least once, per consumer name (Kafka group, RabbitMQ queue owner,
  NATS durable), in channel order per key.
* **Batches.** Messages are consumed in batches (Kafka `getmany`, a JetStream pull of
  up to `BATCH_MAX`, RabbitMQ deliveries that arrive while the previous batch runs),
  with per-message semantics: the handler runs once per message, in order, inside the
  subscription's `batch_scope` (one store transaction for the batch, a savepoint per
  message); a message that fails is retried or dead-lettered alone. Only after the
  scope committed and every failed message was handed to the retry or dead-letter
  path are the batch's messages acknowledged (one offset commit per partition on Kafka);
  that happens in the background, in batch order, while the next batch is handled.
  If the scope fails, nothing of the batch is acknowledged and it is redelivered.
* **Failure policy** (one `RetryPolicy`, carried out natively by each broker): a
  handler that raises is redelivered until `max_attempts` deliveries, waiting
  `delay × multiplier^(n-1)` before delivery n+1, without blocking other messages.
  Then, or at once for a poison message (undecodable, schema-invalid, or
  `NonRetryableError`), the original bytes go to `<channel>.DLT` with the envelope
  headers built by `dead_letter_headers`, and the source message is acknowledged.
* **Observability.** Every retry and dead letter is counted in `DeliveryMetrics`;
  `consumer_lag` reports the messages waiting for one subscription.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, TypeVar

from faststream import BaseMiddleware, Context
from faststream.prometheus.types import PublishingStatus
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from pydantic import TypeAdapter, ValidationError

from brokers.foreign_headers import envelope, is_bookkeeping, shown, shown_headers
from brokers.provisioning import Provisioning

if TYPE_CHECKING:
    from faststream._internal.broker import BrokerUsecase
    from faststream.message import StreamMessage
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from brokers.metrics import DeliveryMetrics
    from brokers.provisioning import Provisioned

T = TypeVar("T")
BrokerT = TypeVar("BrokerT", bound="BrokerUsecase[Any, Any]")
log = logging.getLogger("switchboard.delivery")
events_log = logging.getLogger("switchboard.events")
"""One line per delivery, naming its outcome (handled, retrying, dead-lettering) and the message:
channel, consumer, attempt, orderId, eventId, eventType."""
_PROPAGATED_FIELDS = frozenset(propagate.get_global_textmap().fields)

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


async def decode_untouched(msg: StreamMessage[Any]) -> Any:
    """FastStream decoder for policy subscribers: the policy validates each body itself."""
    return msg.body


def attempt_header(headers: dict[str, Any], default: int = 1) -> int:
    try:
        return max(int(headers.get(ATTEMPTS_HEADER, default)), 1)
    except (TypeError, ValueError):
        return default


class Transport(ABC, Generic[BrokerT]):
    """One broker behind the project's delivery contract (module docstring)."""

    label: ClassVar[str]
    """Value of the `broker` metric label: kafka | rabbitmq | nats."""

    def __init__(
        self,
        url: str,
        policy: RetryPolicy,
        metrics: DeliveryMetrics,
        observability: Observability,
        namespace: str = "",
        *,
        provisioning: Provisioning | None = None,
    ) -> None:
        self.url = url
        self.provisioning = provisioning or Provisioning()
        """What `start_extras` provisions, and how (`brokers.provisioning`)."""
        self.observability = observability
        self.namespace = namespace
        """Prefix of the channels (CHANNEL_NAMESPACE). Consumer identities that are global on a
        broker (Kafka group ids) get it too, so isolated runs never rebalance each other."""
        self.policy = policy
        self.metrics = metrics
        self.subscriptions: list[Subscription] = []
        self.lag_watch: dict[tuple[str, str], None] = {}
        self._lag_refreshed_at = float("-inf")
        self._channels_checked_at = float("-inf")
        self._channels_available = True
        self._pipelines: list[tuple[_Batcher, _SettleQueue]] = []
        self._singles: list[tuple[Outgoing, asyncio.Future[BaseException | None]]] = []
        self._singles_sender: asyncio.Task[None] | None = None
        self._draining = False
        self._broker = self._build_broker()

    @abstractmethod
    def _build_broker(self) -> BrokerT:
        """The FastStream broker, with `broker_options` and the broker's own durability settings."""

    def broker_options(self, prometheus_middleware: type, telemetry_middleware: type) -> dict[str, Any]:
        """What every broker gets: FastStream's Prometheus middleware (and its OpenTelemetry one
        when spans are recorded), a graceful stop, and per-message Received/Processed lines at
        DEBUG (ours is `switchboard.events`)."""
        obs = self.observability
        prometheus = prometheus_middleware(registry=obs.registry, app_name=obs.app_name)
        # FastStream 0.7's own counters and histogram, for messages `publish_batch` sends past it
        self._publish_metrics = prometheus._metrics_manager
        middlewares = [prometheus]
        if obs.tracer_provider is not None:
            middlewares.append(telemetry_middleware(tracer_provider=obs.tracer_provider))
        return {
            "middlewares": middlewares,
            "graceful_timeout": 10.0,
            "log_level": logging.DEBUG,
        }

    @property
    def broker(self) -> BrokerT:
        """The FastStream broker (for the app, AsyncAPI and testing)."""
        return self._broker

    def subscribe(self, sub: Subscription) -> None:
        """Register `sub` with the shared failure policy."""
        self.subscriptions.append(sub)
        self.metrics.touch(sub.channel, sub.consumer)
        self.watch_lag(sub.channel, sub.consumer)
        self._register(sub)

    def watch_lag(self, channel: str, consumer: str) -> None:
        """Report `consumer_lag_messages` for `consumer` on `channel`, even if another process consumes."""
        self.lag_watch[(channel, consumer)] = None

    @abstractmethod
    def _register(self, sub: Subscription) -> None:
        """Create the native subscriber(s), retry plumbing and DLT publisher for `sub`."""

    @abstractmethod
    def listen_dead_letters(self, channel: str, consumer: str, handler: DeadLetterHandler) -> None:
        """Deliver each message dead-lettered from `channel` (by any consumer) to `handler`, without
        taking it off `<channel>.DLT`: listing, replay and other readers still see it. Each listener
        `consumer` gets every dead letter once; a handler error is logged, never retried."""

    @abstractmethod
    def declare_publisher(self, channel: str, schema: Any, description: str) -> None:
        """Make `channel` known as published by this service (AsyncAPI)."""

    @abstractmethod
    async def publish(self, channel: str, body: bytes, *, key: str, headers: dict[str, str]) -> None:
        """Publish raw bytes durably; returns once the broker has confirmed them."""

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Publish each message durably, as `publish` does; returns one outcome per message
        (None once the broker confirmed it, else the exception), a failure affecting no other
        message. Sends start in the given order, so one key's messages keep their order.
        FastStream's publish metrics count every message (`faststream_published_*`, per
        destination; one duration observation per destination and call, as FastStream's own
        batch publish). When spans are recorded every message goes through FastStream's
        publisher, which records the publish spans; otherwise straight to the client library,
        which costs a fraction of FastStream's per-message publish path (also FastStream's path
        under FastStream's in-memory test brokers)."""
        if not messages:
            return []
        if self.observability.tracer_provider is not None or not self._client_publishes():
            return await asyncio.gather(*(self._publish_traced(m) for m in messages), return_exceptions=True)
        started = time.perf_counter()
        outcomes = await self._send_batch(messages)
        self._count_published(messages, outcomes, time.perf_counter() - started)
        return outcomes

    async def publish_one(self, message: Outgoing) -> None:
        """Publish one message as `publish_batch` does; raises its failure. The calls made in one
        event-loop turn (the retry copies and dead letters of a batch) share one `publish_batch`,
        started in call order: one confirmation wait and one metrics update for all of them
        (a publish of its own cost Kafka 42 µs of CPU per message instead of 16)."""
        outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._singles.append((message, outcome))
        if len(self._singles) == 1:  # the task is kept: the loop holds tasks only weakly
            self._singles_sender = asyncio.create_task(self._publish_singles())
        failure = await outcome
        if failure is not None:
            raise failure

    async def _publish_singles(self) -> None:
        singles, self._singles = self._singles, []
        outcomes: Sequence[BaseException | None]
        try:
            outcomes = await self.publish_batch([message for message, _ in singles])
        except BaseException as exc:  # every caller sees it as its outcome
            outcomes = [exc] * len(singles)
            if not isinstance(exc, Exception):
                raise  # a cancellation: the callers are answered first (finally)
        finally:
            for (_, waiter), outcome in zip(singles, outcomes, strict=True):
                if not waiter.done():
                    waiter.set_result(outcome)

    async def _publish_traced(self, message: Outgoing) -> None:
        """`publish` inside the trace context `message` carries: FastStream's publish span continues it."""
        with continued_trace(message.headers):
            await self.publish(message.channel, message.body, key=message.key, headers=message.headers)

    def _client_publishes(self) -> bool:
        """Whether FastStream publishes with the real client (FastStream's in-memory test brokers
        swap its producer for a fake one, which `_send_batch` would bypass)."""
        return isinstance(self._broker.config.producer, self.client_producer)

    client_producer: ClassVar[type]
    """FastStream's producer class that publishes with the client library `_send_batch` uses."""

    @abstractmethod
    async def _send_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """`publish_batch` with the client library: same durability, headers and keys as `publish`."""

    def _metrics_destination(self, message: Outgoing) -> str:
        """The `destination` label FastStream's own publisher would give `message`."""
        return message.channel

    def _count_published(
        self, messages: Sequence[Outgoing], outcomes: list[BaseException | None], seconds: float
    ) -> None:
        per_destination: dict[str, list[BaseException | None]] = {}
        for message, outcome in zip(messages, outcomes, strict=True):
            per_destination.setdefault(self._metrics_destination(message), []).append(outcome)
        metrics = self._publish_metrics
        for destination, results in per_destination.items():
            labels = {"broker": self.label, "destination": destination}
            metrics.observe_published_message_duration(duration=seconds, **labels)
            failures = [r for r in results if r is not None]
            for exc in failures:
                metrics.add_published_message_exception(exception_type=type(exc).__name__, **labels)
            if len(results) > len(failures):
                metrics.add_published_message(
                    status=PublishingStatus.success, amount=len(results) - len(failures), **labels
                )
            if failures:
                metrics.add_published_message(status=PublishingStatus.error, amount=len(failures), **labels)

    async def ping(self, within_s: float = 2.0) -> bool:
        try:
            return bool(await self.broker.ping(timeout=within_s))
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    @abstractmethod
    async def consumer_lag(self, channel: str, consumer: str) -> int | None:
        """Messages of `channel` waiting for `consumer`, or None if unknown right now
        (the consumer never subscribed, or the broker does not answer)."""

    async def consumed_channels_available(self, within_s: float) -> bool:
        """Whether every subscribed channel can be read now: the broker answers the lag of each
        subscription within `within_s` (a partition, stream or queue without a leader does not).
        Asked at most once per CHANNEL_CHECK_S; the answer is kept in between."""
        now = time.monotonic()
        if now - self._channels_checked_at < CHANNEL_CHECK_S:
            return self._channels_available
        self._channels_checked_at = now
        try:
            async with asyncio.timeout(within_s):
                lags = [await self.consumer_lag(sub.channel, sub.consumer) for sub in self.subscriptions]
            self._channels_available = None not in lags
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            log.debug("a consumed channel is unavailable: %s", exc)
            self._channels_available = False
        return self._channels_available

    async def refresh_lag(self) -> None:
        """Update the lag gauges, at most once per LAG_REFRESH_S however often /metrics is
        scraped: each probe costs broker round trips (on RabbitMQ a channel each)."""
        now = time.monotonic()
        if now - self._lag_refreshed_at < LAG_REFRESH_S:
            return
        self._lag_refreshed_at = now
        for channel, consumer in self.lag_watch:
            try:
                waiting = await self.consumer_lag(channel, consumer)
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail on a broker hiccup
                log.debug("lag of %s/%s unavailable: %s", channel, consumer, exc)
                continue
            if waiting is not None:
                self.metrics.set_lag(channel, consumer, waiting)

    # --- dead-letter tooling -------------------------------------------------------
    @abstractmethod
    async def list_dead_letters(self, channel: str, limit: int) -> list[DeadLetter]:
        """Read (without consuming) up to `limit` messages of `<channel>.DLT`."""

    @abstractmethod
    async def replay_dead_letters(self, channel: str, limit: int) -> list[DeadLetter]:
        """Move up to `limit` not-yet-replayed messages of `<channel>.DLT` back to their
        original channel. Each message is replayed once: running it twice replays nothing new."""

    async def start_extras(self) -> None:
        """Declare broker objects the subscribers do not declare themselves: with provisioning on,
        everything the service subscribes, publishes, retries and dead-letters to (`provision`)."""

    async def provision(self, *, dry_run: bool = False) -> list[Provisioned]:  # noqa: ARG002
        """Create the broker objects this transport uses (its subscriptions, publishers and dead-letter
        listeners so far) that are missing, compare the others with what is wanted, and report one
        outcome each; a difference is reported, never altered (`brokers.provisioning`). `dry_run`:
        create nothing. Needs the broker connection."""
        return []

    async def stop_extras(self) -> None:
        """Release what `start_extras` acquired."""

    # --- batches and the failure policy, shared; brokers supply the native moves -------
    def policy_middleware(self, sub: Subscription) -> type[BaseMiddleware]:
        """The FastStream middleware that takes over `sub`'s messages: it turns each FastStream
        message (one or a batch) into deliveries and runs them in batches; FastStream's own
        handler call is never reached (the endpoint only documents the payload)."""
        transport = self
        settler = _SettleQueue()
        batcher = _Batcher(lambda batch: transport._run_batch(sub, batch, settler))
        self._pipelines.append((batcher, settler))

        class DeliveryPolicy(BaseMiddleware):
            async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]) -> Any:  # noqa: ARG002
                if transport._draining:
                    await transport._give_back(msg)
                    return
                deliveries = await transport._deliveries(sub, msg)
                if deliveries:
                    await batcher.submit(deliveries)

        return DeliveryPolicy

    async def drain(self) -> None:
        """Stop reading (FastStream's `running` flag; anything still delivered stays unacknowledged
        and comes again), then wait until the running batches are handled and acknowledged.
        Call before the broker stops: acknowledging needs the connection."""
        self._draining = True
        for subscriber in self._broker.subscribers:
            subscriber.running = False
        await self.settled()

    async def settled(self) -> None:
        """Return once every batch handed to the handlers so far is handled and settled
        (acknowledged, or on Kafka its offsets marked for commit)."""
        for batcher, settler in self._pipelines:
            await batcher.idle()
            await settler.idle()

    @cached_property
    def _tracer(self) -> trace.Tracer:
        provider = self.observability.tracer_provider or trace.NoOpTracerProvider()
        return provider.get_tracer("switchboard.delivery")

    async def _run_batch(self, sub: Subscription, batch: list[Delivery], settler: _SettleQueue) -> None:
        failed: list[Failure] = []
        try:
            async with sub.batch_scope():
                for delivery in batch:
                    failure = await self._handle(sub, delivery)
                    if failure is not None:
                        failed.append(failure)
        except Exception:
            log.exception(
                "batch of %d message(s) of %s for %s not committed; redelivering it",
                len(batch),
                sub.channel,
                sub.consumer,
            )
            await settler.add(_nothing_lost, lambda _: self._settle(sub, [], [d for d in batch if not d.settled]))
            return
        await settler.add(lambda: self._hand_off(sub, failed), lambda lost: self._settle_batch(sub, batch, lost))

    async def _hand_off(self, sub: Subscription, failed: list[Failure]) -> list[Delivery]:
        """Hand each failed message to retry/DLT; returns the ones that could not be handed on."""
        if not failed:
            return []
        outcomes = await asyncio.gather(*(self._on_failure(sub, failure) for failure in failed), return_exceptions=True)
        lost = [f.delivery for f, outcome in zip(failed, outcomes, strict=True) if isinstance(outcome, BaseException)]
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.error("could not hand a failed message of %s to retry/DLT; redelivering: %s", sub.channel, outcome)
        return lost

    async def _settle_batch(self, sub: Subscription, batch: list[Delivery], lost: list[Delivery]) -> None:
        """Settle a batch whose effects are committed: `lost` (not handed on) comes again."""
        pending = [d for d in batch if not d.settled]
        await self._settle(sub, [d for d in pending if d not in lost], [d for d in pending if d in lost])

    async def _handle(self, sub: Subscription, delivery: Delivery) -> Failure | None:
        """Run the handler on one message inside a consumer span continuing the message's trace;
        returns the failure instead of raising it. Logs one line per handled message (a failed
        one gets its line from `_on_failure`, naming what became of it)."""
        event = None
        with self._span(sub, delivery):
            try:
                event = sub.adapter.validate_json(delivery.body)
                await sub.handler(event)
            except Exception as exc:  # noqa: BLE001 - every failure goes through the policy
                return Failure(delivery, exc, _describe(sub, delivery.attempt, event))
            events_log.info("handled %s", _describe(sub, delivery.attempt, event))
        return None

    def _span(self, sub: Subscription, delivery: Delivery) -> Any:
        """The consumer span around one message, in the trace its headers carry. Without a tracer
        provider (spans are not exported) only that context is attached: the same trace id for
        log lines and for the events the handler writes, without a non-recording span per message."""
        if self.observability.tracer_provider is None:
            return continued_trace(delivery.headers)
        return self._tracer.start_as_current_span(
            f"{sub.channel} process",
            context=carried_context(delivery.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": self.label,
                "messaging.destination.name": sub.channel,
                "messaging.consumer.group.name": sub.consumer,
            },
        )

    async def _on_failure(self, sub: Subscription, failure: Failure) -> None:
        delivery, exc = failure.delivery, failure.exc
        with continued_trace(delivery.headers):
            attempt = delivery.attempt
            if not is_poison(exc) and attempt < self.policy.max_attempts:
                delay_ms = self.policy.delay_ms_before(attempt + 1)
                events_log.warning(
                    "retrying in %d ms, attempt %d of %d failed: %s: %s; %s",
                    delay_ms,
                    attempt,
                    self.policy.max_attempts,
                    type(exc).__name__,
                    exc,
                    failure.described,
                )
                await self._schedule_retry(sub, delivery, attempt + 1, delay_ms)
                self.metrics.retry_scheduled(sub.channel, sub.consumer)
                return
            reason = REASON_POISON if is_poison(exc) else REASON_EXHAUSTED
            events_log.error(
                "dead-lettering (%s after %d attempt(s)): %s: %s; %s",
                reason,
                attempt,
                type(exc).__name__,
                exc,
                failure.described,
            )
            await self._dead_letter(sub, delivery, dead_letter_headers(sub, exc, attempt))
            self.metrics.dead_lettered(sub.channel, sub.consumer, reason)

    @abstractmethod
    async def _deliveries(self, sub: Subscription, msg: StreamMessage[Any]) -> list[Delivery]:
        """The deliveries in FastStream's message (one, or a batch), in channel order. Brokers
        without native delay put not-yet-due retries back here and leave them out."""

    async def _give_back(self, msg: StreamMessage[Any]) -> None:
        """A message that arrived while draining: by default it stays unacknowledged and the broker
        delivers it again once this consumer is gone (Kafka: uncommitted; RabbitMQ: requeued
        when the channel closes). Brokers that would wait a timeout for that release it."""

    @abstractmethod
    async def _schedule_retry(self, sub: Subscription, delivery: Delivery, attempt: int, delay_ms: int) -> None:
        """Arrange delivery `attempt` after `delay_ms` (durably, before returning)."""

    @abstractmethod
    async def _dead_letter(self, sub: Subscription, delivery: Delivery, headers: dict[str, str]) -> None:
        """Publish the original bytes to the DLT with `headers` (durably, before returning)."""

    @abstractmethod
    async def _settle(self, sub: Subscription, done: list[Delivery], redeliver: list[Delivery]) -> None:
        """Acknowledge `done` (their outcome is durable) and give `redeliver` back to the broker
        for another delivery, without acknowledging anything after them in channel order."""


class _Batcher:
    """Group commit for one subscription: deliveries submitted while a batch runs form the
    next batch (up to BATCH_MAX); each submitter returns when its deliveries were run."""

    def __init__(self, run: Callable[[list[Delivery]], Awaitable[None]]) -> None:
        self._run = run
        self._waiting: list[tuple[list[Delivery], asyncio.Future[None]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, deliveries: list[Delivery]) -> None:
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((deliveries, done))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        await done

    async def idle(self) -> None:
        """Return once no batch runs (new submissions may start another)."""
        if self._worker is not None and not self._worker.done():
            await asyncio.wait([self._worker])

    def _next_batch(self) -> list[tuple[list[Delivery], asyncio.Future[None]]]:
        taken: list[tuple[list[Delivery], asyncio.Future[None]]] = []
        size = 0
        while self._waiting and (not taken or size + len(self._waiting[0][0]) <= BATCH_MAX):
            item = self._waiting.pop(0)
            taken.append(item)
            size += len(item[0])
        return taken

    async def _drain(self) -> None:
        # submissions made meanwhile join this batch; a small one waits BATCH_LINGER_S for company
        waiting = sum(len(deliveries) for deliveries, _ in self._waiting)
        await asyncio.sleep(BATCH_LINGER_S if waiting < LINGER_BELOW else 0)
        while self._waiting:
            taken = self._next_batch()
            try:
                await self._run([d for deliveries, _ in taken for d in deliveries])
            except BaseException as exc:
                for _, done in taken:
                    if not done.done():
                        done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, done in taken:
                    if not done.done():
                        done.set_result(None)


class _SettleQueue:
    """Finishes one subscription's batches in the background while the next batch is handled:
    first the hand-off of a batch's failed messages to retry/DLT (broker round trips), which
    starts at once, alongside earlier batches' hand-offs; then the batch's acknowledgement,
    strictly in batch order: Kafka commits offsets, and a later batch's commit must not pass
    an earlier batch's record that is still being handed on. (Hand-offs that waited for the
    previous batch's settlement, one round trip each, stalled the consumer: 0.8 s of a 2.5 s
    Kafka run with 10 % failing.) At most MAX_UNSETTLED_BATCHES wait; beyond that the
    consumer waits for the oldest."""

    def __init__(self) -> None:
        self._tasks: collections.deque[asyncio.Task[None]] = collections.deque()

    async def add(self, hand_off: Callable[[], Awaitable[T]], settle: Callable[[T], Awaitable[None]]) -> None:
        previous = self._tasks[-1] if self._tasks else None
        self._tasks.append(asyncio.create_task(self._after(previous, hand_off, settle)))
        while self._tasks and self._tasks[0].done():
            self._tasks.popleft()
        while len(self._tasks) > MAX_UNSETTLED_BATCHES:
            await self._tasks.popleft()

    async def idle(self) -> None:
        """Return once every batch added so far is settled."""
        if self._tasks:
            await asyncio.wait([self._tasks[-1]])

    @staticmethod
    async def _after(
        previous: asyncio.Task[None] | None,
        hand_off: Callable[[], Awaitable[T]],
        settle: Callable[[T], Awaitable[None]],
    ) -> None:
        try:
            handed = await hand_off()
            if previous is not None:
                await asyncio.wait([previous])
            await settle(handed)
        except Exception:  # unsettled messages come again (redelivery); handlers are idempotent
            log.exception("settling a batch failed; its messages will be redelivered")


async def _nothing_lost() -> list[Delivery]:
    return []


async def confirmations(
    sends: Sequence[Awaitable[Any] | BaseException], timeout_s: float | None
) -> list[BaseException | None]:
    """Outcome of each started send (an awaitable confirmation, or the exception that kept it
    from starting): None when confirmed within `timeout_s` of this call, else the exception
    (`TimeoutError` for one still unconfirmed, which is then cancelled). Only for clients where
    cancelling abandons the send or the broker drops a re-send; `timeout_s=None` waits for
    the client's own verdict."""
    futures = {i: asyncio.ensure_future(s) for i, s in enumerate(sends) if not isinstance(s, BaseException)}
    if futures:
        await asyncio.wait(futures.values(), timeout=timeout_s)
    outcomes: list[BaseException | None] = []
    for i, send in enumerate(sends):
        future = futures.get(i)
        if future is None:
            outcomes.append(send)  # type: ignore[arg-type]
        elif not future.done():
            future.cancel()
            outcomes.append(TimeoutError(f"not confirmed within {timeout_s:.0f} s"))
        else:
            outcomes.append(future.exception())
    return outcomes


def carried_context(headers: Mapping[str, Any]) -> otel_context.Context:
    """The W3C trace context carried by message headers (non-text values, as RabbitMQ may
    carry, ignored); an empty context when they carry none (a foreign producer's message)."""
    if not _PROPAGATED_FIELDS.intersection(headers):
        return otel_context.Context()
    return propagate.extract({k: v for k, v in headers.items() if isinstance(v, str)})


@contextlib.contextmanager
def continued_trace(headers: Mapping[str, Any]) -> Iterator[None]:
    """Run the block in the trace context carried by `headers`."""
    token = otel_context.attach(carried_context(headers))
    try:
        yield
    finally:
        otel_context.detach(token)


def _describe(sub: Subscription, attempt: int, event: Any) -> str:
    return (
        f"channel={sub.channel} consumer={sub.consumer} attempt={attempt} orderId={getattr(event, 'order_id', '-')} "
        f"eventId={getattr(event, 'event_id', '-')} eventType={getattr(event, 'event_type', '-')}"
    )


def due_in_seconds(due_at_ms: int) -> float:
    return max(due_at_ms / 1000 - time.time(), 0.0)


async def decode_raw(msg: StreamMessage[Any]) -> bytes:
    """FastStream decoder that hands the body over untouched (dead letters are any bytes)."""
    return bytes(msg.body)


def dead_letter_endpoint(channel: str, handler: DeadLetterHandler) -> Callable[..., Awaitable[None]]:
    """A FastStream-facing function that turns a DLT message into a `DeadLetter` for `handler`."""
    dlt = dead_letter_channel(channel)

    async def on_dead_letter(body: bytes, message: Annotated[Any, Context("message")]) -> None:
        headers = {str(k): v if isinstance(v, str) else str(v) for k, v in (message.headers or {}).items()}
        try:
            await handler(DeadLetter(dlt, body, headers))
        except Exception:
            log.exception("dead-letter listener failed on a message of %s", dlt)

    on_dead_letter.__name__ = getattr(handler, "__name__", "on_dead_letter")
    on_dead_letter.__doc__ = handler.__doc__
    return on_dead_letter


def handler_endpoint(sub: Subscription) -> Callable[..., Awaitable[None]]:
    """A FastStream-facing function whose signature documents and validates `sub.model`."""

    async def endpoint(event: Any) -> None:
        await sub.handler(event)

    endpoint.__annotations__ = {"event": sub.model, "return": None}
    endpoint.__name__ = getattr(sub.handler, "__name__", "handle")
    endpoint.__doc__ = sub.description or sub.handler.__doc__
    return endpoint
