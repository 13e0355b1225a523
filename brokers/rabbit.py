"""RabbitMQ transport: dead-letter exchanges and TTL delay queues.

Native mapping of the shared policy:

* channel → durable fanout exchange of that name; each consumer owns the durable
  quorum queue `<channel>.<consumer>` bound to it (so whatever routing key a foreign
  publisher uses, and whatever binding key a foreign consumer uses, every message reaches
  it). Messages are persistent and published with publisher confirms. Up to PREFETCH
  (two batches) unacked messages are delivered at once; those that arrive while a batch
  runs form the next batch (at most BATCH_MAX). A message is acked only after its batch's store transaction
  committed or it was handed on (a whole batch with one multiple-ack: each subscription
  consumes on a channel of its own); a batch that fails as a whole is nacked with requeue.
* retry → the message is re-published, with our own `x-attempts` header, to the
  consumer's delay queue `<queue>.retry-<delay>ms`, whose `x-message-ttl` expires it
  into the default exchange with the consumer queue as dead-letter routing key: it
  comes back only to this consumer, after the delay, without blocking the queue.
  One delay queue per distinct delay, so TTL expiry is never stuck behind a longer
  one. (`x-death` is not used for counting: its semantics changed in 3.13/4.0.)
* dead letter → the fanout exchange `<channel>.DLT`, bound to the durable queue
  `<channel>.DLT` (what docs/contract.md names; listed and replayed from) and to one
  queue per dead-letter listener, so listening never takes a message off the DLT.
  The consumer queue's `x-delivery-limit` also dead-letters there, as a guard
  against crash loops that never reach our code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from aio_pika import IncomingMessage
from aio_pika.exceptions import ChannelClosed, ChannelNotFoundEntity, DeliveryError
from faststream import AckPolicy
from faststream.prometheus import ConsumeAttrs
from faststream.prometheus.middleware import PrometheusMiddleware
from faststream.rabbit import ExchangeType, QueueType, RabbitBroker, RabbitExchange, RabbitQueue, RabbitRouter
from faststream.rabbit.message import RabbitMessage
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware
from faststream.rabbit.prometheus.provider import RabbitMetricsSettingsProvider
from faststream.rabbit.publisher.producer import AioPikaFastProducerImpl
from faststream.rabbit.response import RabbitPublishCommand
from faststream.rabbit.schemas import Channel
from faststream.rabbit.subscriber.usecase import RabbitSubscriber
from pamqp import encode
from pamqp.commands import Basic

from brokers.base import (
    ATTEMPTS_HEADER,
    BATCH_MAX,
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    DeadLetter,
    DeadLetterHandler,
    Delivery,
    Outgoing,
    Subscription,
    Transport,
    attempt_header,
    confirmations,
    dead_letter_channel,
    dead_letter_endpoint,
    decode_raw,
    decode_untouched,
    handler_endpoint,
)
from brokers.fitting import fit
from brokers.foreign_headers import amqp_value, application_headers
from brokers.nodes import rabbit_node_urls
from brokers.provisioning import log_outcomes
from brokers.rabbit_failover import NodeFailover
from brokers.rabbit_provision import declare_nothing, provision_objects

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from faststream.message import StreamMessage
    from prometheus_client import CollectorRegistry

    from brokers.provisioning import Provisioned


log = logging.getLogger("switchboard.rabbit")

CRASH_LOOP_DELIVERY_LIMIT = 10
RECONNECT_INTERVAL_S = 1.0
"""Pause between reconnection attempts after a lost connection (aio-pika's default is 5 s)."""
PERSISTENT = 2
"""AMQP delivery mode of a message the broker writes to disk."""
FRAME_MAX = 131072
"""AMQP frame size RabbitMQ negotiates by default; the connection's own value is used when known."""
HEADER_FRAME_ALLOWANCE = 1024
"""Bytes of a content header frame besides the headers table: frame envelope, body size, flags and
the other properties (content type, ids, timestamp, delivery mode)."""
PREFETCH = 2 * BATCH_MAX
"""Unacknowledged deliveries per subscription: two batches' worth, so the broker keeps
delivering the next batch while one is handled and acknowledged. With one batch's worth the
batch used up the window: after each multiple-ack the consumer waited a round trip, idle,
with nothing unacknowledged."""


class _Batch(list[IncomingMessage]):
    """The deliveries one FastStream call of a policy subscriber handles. It answers `exchange`,
    `routing_key` and `delivery_tag` like its first message, for FastStream's metrics and
    telemetry providers, which read those of `raw_message`."""

    def __init__(self, messages: list[IncomingMessage]) -> None:
        super().__init__(messages)
        self.exchange = messages[0].exchange
        self.routing_key = messages[0].routing_key
        self.delivery_tag = messages[0].delivery_tag


@dataclass
class _Intake:
    """Deliveries of one `_BatchingSubscriber` waiting for the next FastStream call."""

    waiting: list[IncomingMessage] = field(default_factory=list)
    worker: asyncio.Task[None] | None = None


_intakes: dict[int, _Intake] = {}
"""Per subscriber (by id): FastStream's subscriber classes are slotted, so no own attributes."""


class _BatchingSubscriber(RabbitSubscriber):
    """FastStream's RabbitMQ subscriber, but deliveries that arrive together (up to the prefetch)
    go through FastStream's per-message pipeline (parser, middlewares, metrics) as one call,
    as Kafka's and NATS's batch subscribers do: FastStream has no RabbitMQ batch consumer."""

    __slots__ = ()

    async def consume(self, msg: Any) -> Any:
        if isinstance(msg, _Batch):
            return await super().consume(msg)  # type: ignore[arg-type]  # a batch stands in for its first message
        intake = _intakes.setdefault(id(self), _Intake())
        intake.waiting.append(msg)
        if intake.worker is None or intake.worker.done():
            intake.worker = asyncio.create_task(self._consume_waiting(intake.waiting))
        return None

    async def _consume_waiting(self, waiting: list[IncomingMessage]) -> None:
        await asyncio.sleep(0)  # deliveries of the same loop turn join
        while waiting:
            batch = _Batch(waiting[:BATCH_MAX])
            del waiting[:BATCH_MAX]
            await super().consume(batch)  # type: ignore[arg-type]


async def _parse_batch(batch: _Batch) -> RabbitMessage:
    first = batch[0]
    return RabbitMessage(
        raw_message=batch,  # type: ignore[arg-type]
        body=b"",
        headers=first.headers or {},
        content_type=first.content_type,
        message_id=first.message_id or str(first.delivery_tag),
        correlation_id=first.correlation_id or str(first.delivery_tag),
    )


class _ChannelLevelMetrics(RabbitMetricsSettingsProvider):
    """FastStream labels RabbitMQ metrics `<exchange>.<routing key>`; a producer that routes by
    orderId would make one series per order. Label by exchange (or, on the default exchange,
    by the queue the routing key names): as bounded as on Kafka and NATS. A `_Batch` counts
    as its messages."""

    def get_consume_attrs_from_message(self, msg: StreamMessage[Any]) -> ConsumeAttrs:
        attrs = super().get_consume_attrs_from_message(msg)
        raw = msg.raw_message
        attrs["destination_name"] = raw.exchange or f"default.{raw.routing_key}"
        if isinstance(raw, _Batch):
            attrs["messages_count"] = len(raw)
            attrs["message_size"] = sum(len(m.body) for m in raw)
        return attrs

    def get_publish_destination_name_from_cmd(self, cmd: RabbitPublishCommand) -> str:
        return cmd.exchange.name or f"default.{cmd.destination}"


class RabbitMetricsMiddleware(PrometheusMiddleware[IncomingMessage, RabbitPublishCommand]):
    """FastStream's Prometheus middleware for RabbitMQ with `_ChannelLevelMetrics` labels."""

    def __init__(self, *, registry: CollectorRegistry, app_name: str) -> None:
        super().__init__(
            settings_provider_factory=lambda _: _ChannelLevelMetrics(), registry=registry, app_name=app_name
        )


def exchange_of(channel: str) -> RabbitExchange:
    return RabbitExchange(channel, type=ExchangeType.FANOUT, durable=True)


def consumer_queue_name(sub: Subscription) -> str:
    return f"{sub.channel}.{sub.consumer}"  # also assumed by consumer_lag


def delay_queue(sub: Subscription, delay_ms: int) -> RabbitQueue:
    """A quorum queue whose messages expire after `delay_ms` into the consumer queue. Dead-lettered
    at-least-once (the message leaves the delay queue only once the consumer queue confirmed it,
    which needs `reject-publish` overflow): a retry is never lost between the two queues."""
    return RabbitQueue(
        f"{consumer_queue_name(sub)}.retry-{delay_ms}ms",
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments={
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": consumer_queue_name(sub),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def dead_letter_exchange(channel: str) -> RabbitExchange:
    """Dead letters are published here; it fans out to the DLT queue and to each listener's queue."""
    return RabbitExchange(dead_letter_channel(channel), type=ExchangeType.FANOUT, durable=True)


def dead_letter_queue(channel: str) -> RabbitQueue:
    """The contract's DLT queue, `<channel>.DLT` (listed and replayed from): a quorum queue."""
    return RabbitQueue(dead_letter_channel(channel), queue_type=QueueType.QUORUM, durable=True)


class RabbitTransport(Transport[RabbitBroker]):
    label = "rabbitmq"
    client_producer = AioPikaFastProducerImpl

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._declared_publishers: set[str] = set()
        self._queues_to_declare: dict[str, RabbitQueue] = {}
        self._dead_letter_channels: set[str] = set()
        self._publishing = Channel()
        """The channel `_send_batch` publishes on (FastStream keeps one channel per `Channel` object)."""

    def _build_broker(self) -> RabbitBroker:
        failover = NodeFailover(rabbit_node_urls(self.url))
        return RabbitBroker(
            failover.initial(),
            on_close=[failover.on_close],
            reconnect_interval=RECONNECT_INTERVAL_S,
            default_channel=Channel(prefetch_count=PREFETCH),
            **self.broker_options(RabbitMetricsMiddleware, RabbitTelemetryMiddleware),
        )

    def _register(self, sub: Subscription) -> None:
        router = RabbitRouter(middlewares=[self.policy_middleware(sub)])
        dlt = dead_letter_exchange(sub.channel)
        queue = RabbitQueue(
            consumer_queue_name(sub),
            queue_type=QueueType.QUORUM,
            durable=True,
            arguments={
                "x-delivery-limit": CRASH_LOOP_DELIVERY_LIMIT,
                "x-dead-letter-exchange": dlt.name,
            },
        )
        subscriber = router.subscriber(
            queue,
            exchange_of(sub.channel),
            # a channel of its own (FastStream keys channels by instance): its delivery tags are
            # this subscription's alone, so `_settle` may acknowledge a batch with one multiple-ack
            channel=Channel(prefetch_count=PREFETCH),
            ack_policy=AckPolicy.MANUAL,
            parser=_parse_batch,
            decoder=decode_untouched,
            title=f"{sub.channel}:{sub.consumer}",
            description=sub.description,
        )
        subscriber(handler_endpoint(sub))
        subscriber.__class__ = _BatchingSubscriber
        self._broker.include_router(router)
        for delay_ms in self.policy.retry_delays_ms():
            q = delay_queue(sub, delay_ms)
            self._queues_to_declare[q.name] = q
        self._dead_letter_channels.add(sub.channel)
        if dlt.name not in self._declared_publishers:
            self._declared_publishers.add(dlt.name)
            self._broker.publisher(
                exchange=dlt,
                title=dlt.name,
                description=f"Dead letters of {sub.channel}: original bytes plus x-* envelope headers.",
                schema=sub.model,
                persist=True,
            )

    def declare_publisher(self, channel: str, schema: Any, description: str) -> None:
        if channel not in self._declared_publishers:
            self._declared_publishers.add(channel)
            self._broker.publisher(
                exchange=exchange_of(channel), title=channel, description=description, schema=schema, persist=True
            )

    def listen_dead_letters(self, channel: str, consumer: str, handler: DeadLetterHandler) -> None:
        dlt = dead_letter_exchange(channel)
        self._dead_letter_channels.add(channel)
        self._broker.subscriber(
            RabbitQueue(f"{dlt.name}.{consumer}", queue_type=QueueType.QUORUM, durable=True),
            dlt,
            ack_policy=AckPolicy.ACK,
            decoder=decode_raw,
            title=f"{dlt.name}:{consumer}",
            description=f"{consumer} reports every dead letter of {channel}.",
        )(dead_letter_endpoint(channel, handler))

    async def start_extras(self) -> None:
        """Provision what the service uses (`brokers.rabbit_provision`). PROVISION off: nothing, and
        FastStream's own declarations become passive: an operator provisioned."""
        if self.provisioning.enabled:
            log_outcomes(await self.provision(), log)
        else:
            declare_nothing(self._broker)

    async def provision(self, *, dry_run: bool = False) -> list[Provisioned]:
        """The subscribers' queues and exchanges, the publishers' exchanges, the delay queues and
        the DLT queues bound to their dead-letter exchanges."""
        own: list[tuple[RabbitQueue, RabbitExchange | None]] = [(q, None) for q in self._queues_to_declare.values()]
        own += [(dead_letter_queue(c), dead_letter_exchange(c)) for c in sorted(self._dead_letter_channels)]
        return await provision_objects(self._broker, own, dry_run=dry_run)

    async def publish(self, channel: str, body: bytes, *, key: str, headers: dict[str, str]) -> None:
        await self._broker.publish(
            body,
            exchange=exchange_of(channel),
            routing_key=_routing_key(headers),
            persist=True,
            headers={**headers, "order-id": key},
            correlation_id=headers.get(EVENT_ID_HEADER),
        )

    async def _send_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        publishing = await self._broker.config.channel_manager.get_channel(self._publishing)
        channel = await publishing.get_underlay_channel()
        now = datetime.now(UTC)
        sends = []  # confirm-mode channel: each resolves on the broker's ack, raises on its nack
        for m in messages:
            exchange, routing_key, properties = _addressed(m, now)
            sends.append(
                channel.basic_publish(m.body, exchange=exchange, routing_key=routing_key, properties=properties)
            )
        # no timeout of ours, as FastStream's publish: a confirm comes, or the channel closes
        # (aiormq fails what is pending); a broker under a resource alarm holds publishers back
        outcomes = await confirmations(sends, timeout_s=None)
        if any(isinstance(outcome, DeliveryError) for outcome in outcomes):
            await self._replace_publishing_channel(publishing)
        return outcomes

    async def _replace_publishing_channel(self, nacked: Any) -> None:
        """Publish on a new channel after a nack: on RabbitMQ 3.10 a channel that published while a
        quorum queue's leader died is nacked for ~30 s afterwards, while a new channel is not."""
        log.warning("RabbitMQ nacked a publish; publishing on a new channel")
        self._publishing = Channel()
        with contextlib.suppress(Exception):
            await nacked.close()

    def _metrics_destination(self, message: Outgoing) -> str:
        """As `_ChannelLevelMetrics` labels FastStream's publishes: the exchange, or
        `default.<queue>` for a copy sent to a delay queue through the default exchange."""
        if isinstance(message, _Copy) and message.to_queue:
            return f"default.{message.channel}"
        return message.channel

    # --- native failure moves ----------------------------------------------------
    async def _deliveries(self, sub: Subscription, msg: StreamMessage[Any]) -> list[Delivery]:  # noqa: ARG002
        return [Delivery(m.body, m.headers or {}, attempt_header(m.headers or {}), m) for m in msg.raw_message]

    async def _schedule_retry(self, sub: Subscription, delivery: Delivery, attempt: int, delay_ms: int) -> None:
        headers = self._fitted({**_carried(delivery.headers), ATTEMPTS_HEADER: str(attempt)}, {ATTEMPTS_HEADER})
        await self.publish_one(_Copy.of(delivery, delay_queue(sub, delay_ms).name, headers, to_queue=True))

    async def _dead_letter(self, sub: Subscription, delivery: Delivery, headers: dict[str, str]) -> None:
        envelope = self._fitted({**_carried(delivery.headers), **headers}, set(headers))
        await self.publish_one(_Copy.of(delivery, dead_letter_exchange(sub.channel).name, envelope))

    def _fitted(self, headers: dict[str, Any], ours: set[str]) -> dict[str, Any]:
        """`headers` made to fit one content header frame (`brokers.fitting`, no body spill: RabbitMQ's
        `max_message_size` counts the body only, and a copy's body is the original's, which fitted)."""
        amqp = getattr(getattr(self._broker._connection, "transport", None), "connection", None)
        frame_max = getattr(getattr(amqp, "connection_tune", None), "frame_max", 0) or FRAME_MAX
        limit = frame_max - HEADER_FRAME_ALLOWANCE
        return fit(b"", headers, limit=limit, size=_header_table_size, envelope=ours).headers

    async def _settle(self, sub: Subscription, done: list[Delivery], redeliver: list[Delivery]) -> None:  # noqa: ARG002
        """One multiple-ack up to the batch's last delivery when every delivery is done: the
        subscription's channel is its own and batches settle in delivery order, so every
        earlier delivery on it is settled already. Otherwise one ack or nack each."""
        if done and not redeliver:
            await max(done, key=lambda d: d.native.delivery_tag).native.ack(multiple=True)
            return
        for delivery in done:
            await delivery.native.ack()
        for delivery in redeliver:
            await delivery.native.nack(requeue=True)

    # --- lag -----------------------------------------------------------------------
    async def consumer_lag(self, channel: str, consumer: str) -> int | None:
        """Ready messages in the consumer's queue."""
        queue_name = f"{channel}.{consumer}"
        connection = self._broker._connection
        if connection is None or connection.is_closed:
            return None
        amqp_channel = await connection.channel()
        try:
            queue = await amqp_channel.declare_queue(queue_name, passive=True)
            return int(queue.declaration_result.message_count or 0)
        except ChannelClosed:
            return None
        finally:
            if not amqp_channel.is_closed:
                await amqp_channel.close()

    # --- dead-letter tooling -----------------------------------------------------
    async def _drain(self, channel: str, limit: int, *, consume: bool) -> list[DeadLetter]:
        connection = self._broker._connection
        assert connection is not None, "broker not connected"
        chan = await connection.channel()
        letters: list[DeadLetter] = []
        held = []
        try:
            try:  # passively: the queue is provisioned (a quorum queue; a legacy classic one is used as it is)
                queue = await chan.declare_queue(dead_letter_queue(channel).name, passive=True)
            except ChannelNotFoundEntity:
                return letters  # no DLT queue: nothing was dead-lettered
            # only what is there now: a replayed message that fails again is a new dead letter
            waiting = int(queue.declaration_result.message_count or 0)
            while len(letters) < min(limit, waiting):
                incoming = await queue.get(no_ack=False, fail=False)
                if incoming is None:
                    break
                raw = tuple((incoming.headers or {}).items())
                headers = {k: _text(v) for k, v in raw}
                letter = DeadLetter(queue.name, incoming.body, headers, str(incoming.delivery_tag), raw)
                letters.append(letter)
                if consume:  # AMQP values as they came, without any framework's bookkeeping headers
                    await self._broker.publish(
                        letter.body,
                        exchange=exchange_of(letter.original_destination),
                        routing_key=headers.get(EVENT_TYPE_HEADER, ""),
                        persist=True,
                        headers={k: amqp_value(v) for k, v in application_headers(raw)},
                    )
                    await incoming.ack()
                else:
                    held.append(incoming)
        finally:
            for incoming in held:
                await incoming.nack(requeue=True)
            if not chan.is_closed:
                await chan.close()
        return letters

    async def list_dead_letters(self, channel: str, limit: int) -> list[DeadLetter]:
        return await self._drain(channel, limit, consume=False)

    async def replay_dead_letters(self, channel: str, limit: int) -> list[DeadLetter]:
        return await self._drain(channel, limit, consume=True)


@dataclass(frozen=True, slots=True)
class _Copy(Outgoing):
    """A retried or dead-lettered copy of a delivery: keeps its headers, content type and message
    id as they were; `to_queue`: `channel` names a queue (a retry's delay queue), reached through
    the default exchange, instead of an exchange."""

    content_type: str | None = None
    message_id: str | None = None
    to_queue: bool = False

    @classmethod
    def of(cls, delivery: Delivery, channel: str, headers: dict[str, Any], *, to_queue: bool = False) -> _Copy:
        msg = delivery.native
        key = _text(headers.get("order-id", ""))
        return cls(channel, delivery.body, key, headers, msg.content_type, msg.message_id, to_queue)


def _addressed(m: Outgoing, now: datetime) -> tuple[str, str, Basic.Properties]:
    """Exchange, routing key and properties of a persistent publish of `m`: an outbox event goes
    to the channel's exchange, a `_Copy` to its delay queue or dead-letter exchange."""
    if isinstance(m, _Copy):
        exchange, routing_key = ("", m.channel) if m.to_queue else (m.channel, _routing_key(m.headers))
        content_type, message_id, headers = m.content_type, m.message_id, m.headers
    else:
        exchange, routing_key = m.channel, _routing_key(m.headers)
        content_type, message_id, headers = "application/json", None, {**m.headers, "order-id": m.key}
    properties = Basic.Properties(
        content_type=content_type,
        delivery_mode=PERSISTENT,
        correlation_id=_text(m.headers.get(EVENT_ID_HEADER) or "") or None,
        message_id=message_id,
        timestamp=now,
        headers=cast("dict[str, Any]", headers),  # text values: valid AMQP field values
    )
    return exchange, routing_key, properties


def _header_table_size(body: bytes, headers: Mapping[str, Any]) -> int:  # noqa: ARG001 - the body has its own frames
    """Encoded size of `headers` as an AMQP field table (a value pamqp cannot encode: its text's size)."""
    try:
        return len(encode.field_table(dict(headers)))
    except (TypeError, ValueError, AttributeError):
        return sum(len(str(k).encode()) + len(str(v).encode()) + 6 for k, v in headers.items())


def _routing_key(headers: dict[str, str]) -> str:
    """The exchange fans out whatever the key; the event type makes it informative for tools
    that show routing keys, and stays low-cardinality (never the orderId)."""
    return headers.get(EVENT_TYPE_HEADER, "")


def _carried(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Headers a retried or dead-lettered copy keeps: RabbitMQ's own death records stay behind."""
    return {k: v for k, v in headers.items() if not k.startswith(("x-death", "x-first-death", "x-last-death"))}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
