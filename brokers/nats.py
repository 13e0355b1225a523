"""NATS JetStream transport: durable pull consumers, max_deliver and nak-with-delay.

Native mapping of the shared policy:

* channel → subject of that name, kept in the JetStream stream named like the
  channel (dots become underscores); `<channel>.DLT` is kept in `<stream>-DLT`.
  Publishing waits for the JetStream ack; `Nats-Msg-Id` (the event id) lets the
  server drop duplicates that a retrying publisher sends within its window.
* each consumer is a durable pull consumer named after it, with explicit acks and
  `max_deliver` = attempts + 1 (the spare delivery lets a process that crashed on
  the last attempt still dead-letter the message). A batch is what the stream holds
  when the consumer asks (`_PromptBatchSubscriber`); each message is acked after the
  batch's store transaction committed, a batch that fails as a whole is nak'ed.
* retry → `nak(delay)`: the server redelivers after the delay; the attempt number
  is the server's own delivery count. Nothing waits in the client.
* dead letter → publish to `<channel>.DLT` with the envelope, then ack the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from typing import TYPE_CHECKING, Any

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, DeliverPolicy, JStream, NatsBroker, NatsRouter, PullSub
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from faststream.nats.publisher.producer import NatsFastProducerImpl
from faststream.nats.subscriber.usecases.stream_pull_subscriber import BatchPullStreamSubscriber
from nats.aio.msg import Msg as NatsMsg
from nats.errors import ConnectionClosedError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import Header
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from brokers.base import (
    BATCH_MAX,
    DLT_SUFFIX,
    EVENT_ID_HEADER,
    REASON_EXHAUSTED,
    DeadLetter,
    DeadLetterHandler,
    Delivery,
    Outgoing,
    Subscription,
    Transport,
    confirmations,
    dead_letter_channel,
    dead_letter_endpoint,
    dead_letter_headers,
    decode_raw,
    decode_untouched,
    handler_endpoint,
    replay_headers,
)
from brokers.nats_provision import StreamProvisioner, cluster_size
from brokers.nodes import nats_servers
from brokers.provisioning import log_outcomes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from faststream.message import StreamMessage
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from brokers.provisioning import Provisioned


log = logging.getLogger("switchboard.nats")

ACK_WAIT_S = 30.0
PULL_BATCH = 32
PUBLISH_ACK_TIMEOUT_S = 10.0
"""How long `publish_batch` waits for JetStream's acks. A send given up on may still be stored
(e.g. flushed after a reconnect); its re-send carries the same Nats-Msg-Id and is dropped."""
IDLE_FETCH_S = 5.0
FILL_FETCH_S = 0.005
RECONNECT_WAIT_S = 0.5
REPLAY_DURABLE = "switchboard-dlt-replay"
MSG_ID_HEADER = "Nats-Msg-Id"
NO_RESPONDERS = "503"
HEARTBEAT = "100"
V1_ACK_TOKENS = 9
V1_DELIVERED = 4


def stream_name(subject: str) -> str:
    return subject.replace(".", "_").replace("*", "_").replace(">", "_")


def stream_of(channel: str) -> JStream:
    """The channel's stream. Its replicas are set, and FastStream's declaration switched off, by
    `start_extras` (`brokers.nats_provision`), once the cluster size is known."""
    return JStream(stream_name(channel), subjects=[channel], declare=True)


def dlt_stream_of(channel: str) -> JStream:
    """The stream of `<channel>.DLT`, provisioned as `stream_of`'s."""
    return JStream(stream_name(channel) + "-DLT", subjects=[channel + ".DLT"], declare=True)


class NatsTransport(Transport[NatsBroker]):
    label = "nats"
    client_producer = NatsFastProducerImpl

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._streams: dict[str, JStream] = {}
        self._declared_publishers: set[str] = set()
        self._acked = _AckedPublisher()

    def _build_broker(self) -> NatsBroker:
        return NatsBroker(
            nats_servers(self.url),
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            **self.broker_options(NatsPrometheusMiddleware, NatsTelemetryMiddleware),
        )

    @property
    def _js(self) -> JetStreamContext:
        return self._broker.config.connection_state.stream

    def _stream(self, subject: str) -> JStream:
        if subject not in self._streams:
            factory = dlt_stream_of if subject.endswith(".DLT") else stream_of
            self._streams[subject] = factory(subject.removesuffix(".DLT"))
        return self._streams[subject]

    def _register(self, sub: Subscription) -> None:
        router = NatsRouter(middlewares=[self.policy_middleware(sub)])
        subscriber = router.subscriber(
            sub.channel,
            stream=self._stream(sub.channel),
            durable=sub.consumer,
            pull_sub=PullSub(batch_size=BATCH_MAX, timeout=IDLE_FETCH_S, batch=True),
            config=ConsumerConfig(max_deliver=self.policy.max_attempts + 1, ack_wait=ACK_WAIT_S),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.MANUAL,
            decoder=decode_untouched,
            title=f"{sub.channel}:{sub.consumer}",
            description=sub.description,
        )
        subscriber(handler_endpoint(sub))
        subscriber.__class__ = _PromptBatchSubscriber
        self._broker.include_router(router)
        self._declare(
            sub.dead_letter_channel,
            sub.model,
            f"Dead letters of {sub.channel}: original bytes plus x-* envelope headers.",
        )

    def listen_dead_letters(self, channel: str, consumer: str, handler: DeadLetterHandler) -> None:
        dlt = dead_letter_channel(channel)
        self._broker.subscriber(
            dlt,
            stream=self._stream(dlt),
            durable=consumer,
            pull_sub=PullSub(batch_size=PULL_BATCH, timeout=5.0),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.ACK,
            decoder=decode_raw,
            title=f"{dlt}:{consumer}",
            description=f"{consumer} reports every dead letter of {channel}.",
        )(dead_letter_endpoint(channel, handler))

    def declare_publisher(self, channel: str, schema: Any, description: str) -> None:
        self._declare(channel, schema, description)

    def _declare(self, subject: str, schema: Any, description: str) -> None:
        if subject not in self._declared_publishers:
            self._declared_publishers.add(subject)
            self._broker.publisher(
                subject, stream=self._stream(subject), title=subject, description=description, schema=schema
            )

    async def start_extras(self) -> None:
        """Provision the streams (PROVISION off: FastStream declares none either; an operator did),
        then watch for messages JetStream stopped redelivering."""
        if self.provisioning.enabled:
            log_outcomes(await self.provision(), log)
        else:
            for stream in self._streams.values():
                stream.declare = False
        for sub in self.subscriptions:
            await self._watch_max_deliveries(sub)

    async def provision(self, *, dry_run: bool = False) -> list[Provisioned]:
        """Every stream this service subscribes, publishes or dead-letters to (channels and `-DLT` streams)."""
        provisioner = StreamProvisioner(self._js, self.provisioning, cluster_size(self._broker.connection))
        return [await provisioner.ensure(stream, dry_run=dry_run) for stream in self._streams.values()]

    async def _watch_max_deliveries(self, sub: Subscription) -> None:
        """Dead-letter messages the server gave up on without our code deciding (a process
        killed during every allowed delivery): JetStream announces them in an advisory.
        A queue group makes one instance of the consumer handle each advisory."""
        stream = stream_name(sub.channel)
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{sub.consumer}"

        async def on_advisory(advisory: Any) -> None:
            try:
                info = json.loads(advisory.data)
                stored = await self._js.get_msg(stream, int(info["stream_seq"]))
                exc = MaxDeliveriesExceeded(f"JetStream stopped redelivering after {info.get('deliveries')} deliveries")
                headers = {
                    **dict(stored.headers or {}),
                    **dead_letter_headers(sub, exc, int(info.get("deliveries", 0))),
                }
                await self._publish_dead_letter(sub, stored.data or b"", headers)
                self.metrics.dead_lettered(sub.channel, sub.consumer, REASON_EXHAUSTED)
                log.error("dead-lettered %s seq %s for %s: %s", sub.channel, info.get("stream_seq"), sub.consumer, exc)
            except Exception:
                log.exception("could not dead-letter after a MAX_DELIVERIES advisory")

        await self._broker.connection.subscribe(subject, queue=f"{sub.consumer}-advisories", cb=on_advisory)

    async def publish(self, channel: str, body: bytes, *, key: str, headers: dict[str, str]) -> None:  # noqa: ARG002
        await self._broker.publish(
            body,
            channel,
            headers=_deduplicated(headers),
            stream=self._stream(channel).name,
            correlation_id=headers.get(EVENT_ID_HEADER),
        )

    async def _send_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        nc = self._broker.connection
        sends: list[Any] = []
        for m in messages:
            headers = {"content-type": "application/json", "correlation_id": m.headers.get(EVENT_ID_HEADER, "")}
            # dead letters are never deduplicated (`_publish_dead_letter`)
            headers.update(m.headers if m.channel.endswith(DLT_SUFFIX) else _deduplicated(m.headers))
            headers[Header.EXPECTED_STREAM] = self._stream(m.channel).name
            try:
                sends.append(await self._acked.publish(nc, m.channel, m.body, headers))
            except Exception as exc:  # noqa: BLE001 - reported as this message's outcome
                sends.append(exc)
        return await confirmations(sends, PUBLISH_ACK_TIMEOUT_S)

    # --- native failure moves ----------------------------------------------------
    async def _deliveries(self, sub: Subscription, msg: StreamMessage[Any]) -> list[Delivery]:  # noqa: ARG002
        return [Delivery(m.data, dict(m.headers or {}), _delivery_count(m), m) for m in msg.raw_message]

    async def drain(self) -> None:
        """Also release what the server already sent but no batch took: the tail of a fill fetch
        lands in the pull subscription's queue after the fetch returned. Flushing twice lets
        everything the server sent before the PONG arrive (and our naks and acks leave)."""
        await super().drain()
        prompt = [s for s in self._broker.subscribers if isinstance(s, _PromptBatchSubscriber)]
        for _ in range(2):
            for subscriber in prompt:
                await subscriber.release_queued()
            with contextlib.suppress(Exception):  # acks are buffered publishes: send them before the close
                await self._broker.connection.flush()

    async def _give_back(self, msg: StreamMessage[Any]) -> None:
        await _release(msg.raw_message)

    async def _schedule_retry(self, sub: Subscription, delivery: Delivery, attempt: int, delay_ms: int) -> None:  # noqa: ARG002
        await delivery.native.nak(delay=delay_ms / 1000)
        delivery.settled = True

    async def _dead_letter(self, sub: Subscription, delivery: Delivery, headers: dict[str, str]) -> None:
        await self._publish_dead_letter(sub, delivery.body, {**delivery.headers, **headers})

    async def _settle(self, sub: Subscription, done: list[Delivery], redeliver: list[Delivery]) -> None:  # noqa: ARG002
        """Ack each settled message; nak the others for an immediate redelivery. (Acks are
        fire-and-forget publishes: a lost one means a redelivery, which handlers absorb.)"""
        for delivery in done:
            await delivery.native.ack()
        for delivery in redeliver:
            await delivery.native.nak()

    async def _publish_dead_letter(self, sub: Subscription, body: bytes, headers: dict[str, Any]) -> None:
        """Dead letters carry no `Nats-Msg-Id`: an event dead-lettered again after a replay is
        a new dead letter, which the DLT stream's duplicate window would drop."""
        await self.publish_one(Outgoing(sub.dead_letter_channel, body, "", _carried(headers)))

    # --- lag -----------------------------------------------------------------------
    async def consumer_lag(self, channel: str, consumer: str) -> int | None:
        """Messages the durable has not been delivered yet (`num_pending`)."""
        try:
            info = await self._js.consumer_info(stream_name(channel), consumer)
        except NotFoundError:
            return None
        return int(info.num_pending or 0)

    # --- dead-letter tooling -----------------------------------------------------
    async def _fetch_dlt(self, channel: str, limit: int, durable: str | None) -> tuple[Any, list[Any]]:
        """Messages of `<channel>.DLT` stored before this call (and up to `limit`): a replay whose
        messages fail again must not pick up its own new dead letters. Later ones are nak'ed."""
        dlt = channel + ".DLT"
        stream = self._stream(dlt).name
        try:
            last = (await self._js.stream_info(stream)).state.last_seq
        except NotFoundError:
            last = 0
        psub = await self._js.pull_subscribe(dlt, durable=durable, stream=stream)
        messages: list[Any] = []
        while last and len(messages) < limit:
            try:
                batch = await psub.fetch(min(limit - len(messages), 256), timeout=1.0)
            except NatsTimeoutError:
                break
            late = [m for m in batch if m.metadata.sequence.stream > last]
            messages.extend(m for m in batch if m.metadata.sequence.stream <= last)
            for m in late:
                await m.nak()
            if late:
                break
        return psub, messages

    async def list_dead_letters(self, channel: str, limit: int) -> list[DeadLetter]:
        psub, messages = await self._fetch_dlt(channel, limit, None)
        await psub.unsubscribe()
        return [_dead_letter_of(m) for m in messages]

    async def replay_dead_letters(self, channel: str, limit: int) -> list[DeadLetter]:
        psub, messages = await self._fetch_dlt(channel, limit, REPLAY_DURABLE)
        letters = []
        for m in messages:
            letter = _dead_letter_of(m)
            headers = replay_headers(letter)
            await self.publish(letter.original_destination, letter.body, key="", headers=headers)
            await m.ack()
            letters.append(letter)
        await psub.unsubscribe()
        return letters


class _AckedPublisher:
    """JetStream publishes acknowledged asynchronously on one inbox subscription, as nats-py's
    `publish_async` does, but with JetStream's refusals reported: `publish_async` raises them
    inside its reply callback, so its future never resolves and the sender waits out its
    timeout. `publish` returns a future that resolves when the stream stored the message, or
    fails with JetStream's error (`NoStreamResponseError` when no stream takes the subject,
    `BadRequestError` when another stream than the expected one does); a future cancelled by
    its waiter is forgotten, and an ack arriving for it later is ignored. Without
    `publish_async`'s semaphore and random token it also costs less: 28 → 21 µs of CPU per
    publish with 200 in flight."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._tokens = itertools.count()
        self._client: Client | None = None
        self._inbox = ""

    async def publish(self, nc: Client, subject: str, payload: bytes, headers: dict[str, str]) -> asyncio.Future[None]:
        if self._client is not nc:  # first publish on this connection (subscriptions survive reconnects)
            self._client, self._inbox = nc, nc.new_inbox() + "."
            try:
                await nc.subscribe(self._inbox + "*", cb=self._on_ack)
            except BaseException:
                self._client = None
                raise
        token = str(next(self._tokens))
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[token] = stored
        try:
            await nc.publish(subject, payload, reply=self._inbox + token, headers=headers)
        except BaseException:
            del self._pending[token]
            raise
        stored.add_done_callback(lambda _: self._pending.pop(token, None))
        return stored

    async def _on_ack(self, msg: Msg) -> None:
        stored = self._pending.pop(msg.subject[len(self._inbox) :], None)
        if stored is None or stored.done():
            return
        if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS:
            stored.set_exception(NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
        except ValueError as exc:
            stored.set_exception(exc)
            return
        if "error" not in reply:
            stored.set_result(None)
            return
        try:
            APIError.from_error(reply["error"])  # raises the error's own class (nats-py's publish_async misses that)
        except Exception as exc:  # noqa: BLE001 - whatever it raises is this publish's outcome
            stored.set_exception(exc)


class _PromptBatchSubscriber(BatchPullStreamSubscriber):
    """FastStream's batch pull subscriber, but a batch is what the stream holds *now*: wait
    (one long pull) for the first message, then take what is already there (up to BATCH_MAX,
    waiting at most FILL_FETCH_S). FastStream's own loop waits for a full batch or its timeout,
    which would hold a lone message for seconds. While a batch is handled, the next one is
    already asked for (one no-wait pull), so a backlog streams in without a pause between
    batches; what it brings waits in the subscription's queue for the next round."""

    __slots__ = ()

    async def _consume_pull(self) -> None:
        assert self.subscription, "subscription not created"
        while self.running:
            messages = _queued_messages(self.subscription._sub, BATCH_MAX)  # type: ignore[attr-defined]
            if not messages:
                try:
                    messages = await self.subscription.fetch(batch=1, timeout=IDLE_FETCH_S)
                except TimeoutError:  # nats-py raises its own subclass or the builtin one
                    continue
                except (ConnectionClosedError, ServiceUnavailableError):
                    await asyncio.sleep(RECONNECT_WAIT_S)  # unacked messages are redelivered by the server
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. a stream or consumer leader being elected
                    log.warning("JetStream pull failed, pulling again: %s: %s", type(exc).__name__, exc)
                    await asyncio.sleep(RECONNECT_WAIT_S)
                    continue
            with contextlib.suppress(ConnectionClosedError, OutboundBufferLimitError):
                messages += await self._fill(BATCH_MAX - len(messages), FILL_FETCH_S)
                if self.running:
                    await self._pull(BATCH_MAX)
            if self.running:
                await self.consume(messages)
            else:  # draining: the next consumer gets them now, not after ack_wait
                await _release(messages)

    async def _fill(self, batch: int, timeout_s: float) -> list[Msg]:
        """What the stream holds for this consumer now, up to `batch` messages: one no-wait pull
        request, its messages taken straight from the subscription's queue until the server says
        there are no more or `timeout_s` passes. nats-py's `fetch` waits for each message with a
        task of its own and a timer: 23 → 8 µs of CPU per message (acks included), measured on a
        40k backlog. Uses nats-py's pull-subscription internals (`_sub`, `_nms`, `_deliver`), as
        its `fetch` does; messages arriving after the return stay queued for the next pull."""
        sub = self.subscription._sub  # type: ignore[union-attr]
        queue: asyncio.Queue[Msg] = sub._pending_queue
        taken = _queued_messages(sub, batch)
        needed = batch - len(taken)
        if needed <= 0:
            return taken
        await self._pull(needed)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while needed > 0:
            try:
                message = queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    message = await asyncio.wait_for(queue.get(), deadline - loop.time())
                except TimeoutError:
                    break
            sub._pending_size -= len(message.data)
            status = _status(message)
            if status == HEARTBEAT:
                continue
            if status:  # no more messages (404), request expired (408) or refused (409)
                break
            taken.append(message)
            needed -= 1
        return taken

    async def _pull(self, batch: int) -> None:
        """Ask the server for up to `batch` messages it holds now (a no-wait pull request); they
        arrive in the subscription's queue, after them a `404` if there were fewer."""
        psub = self.subscription
        request = json.dumps({"batch": batch, "no_wait": True}).encode()
        await self.connection.publish(psub._nms, request, psub._deliver)  # type: ignore[union-attr]

    async def release_queued(self) -> None:
        """nak the messages waiting in the pull subscription's queue (delivered after a fetch
        returned); a stopped consumer would leave them to ack_wait."""
        sub = getattr(self.subscription, "_sub", None)
        if sub is not None:
            await _release(_queued_messages(sub, sub._pending_queue.qsize()))


def _queued_messages(sub: Any, most: int) -> list[Msg]:
    """The messages (not the status replies) among the first `most` entries already queued for
    nats-py subscription `sub`, taken off its queue with its pending-bytes accounting."""
    queue: asyncio.Queue[Msg] = sub._pending_queue
    taken = []
    for _ in range(most):
        if queue.empty():
            break
        message = queue.get_nowait()
        sub._pending_size -= len(message.data)
        if not _status(message):
            taken.append(message)
    return taken


def _status(message: Msg) -> str | None:
    """The JetStream status of a pull reply (`100` heartbeat, `404`, `408`, `409`), None for a message."""
    return message.headers.get(Header.STATUS) if message.headers else None


async def _release(messages: list[Any]) -> None:
    """nak without delay: redelivered at once, to whoever pulls next (it counts as a delivery)."""
    for message in messages:
        with contextlib.suppress(Exception):  # connection closing: ack_wait releases it instead
            await message.nak()


def _deduplicated(headers: dict[str, str]) -> dict[str, str]:
    """`headers` plus JetStream's message id (the event id): a re-sent event is stored once."""
    if EVENT_ID_HEADER in headers:
        return {**headers, MSG_ID_HEADER: headers[EVENT_ID_HEADER]}
    return headers


def _delivery_count(msg: Any) -> int:
    """The server's delivery count, read from the ack subject (`$JS.ACK.<stream>.<consumer>.
    <delivered>.…`, or the longer v2 form) without building nats-py's whole `metadata`
    (a timestamp and three objects per message)."""
    tokens = (getattr(msg, "reply", None) or "").split(".")
    index = V1_DELIVERED if len(tokens) == V1_ACK_TOKENS else NatsMsg.Ack.NumDelivered
    try:
        return int(tokens[index]) if tokens[0] == "$JS" else 1
    except (IndexError, ValueError):  # in-memory test broker: no ack subject
        return 1


class MaxDeliveriesExceeded(Exception):
    """JetStream delivered a message `max_deliver` times without an ack or a decision."""


def _carried(headers: dict[str, Any]) -> dict[str, Any]:
    """Headers a dead-lettered copy keeps: not the server's own (`Nats-*`), which would dedup it."""
    return {k: v for k, v in headers.items() if not k.startswith("Nats-")}


def _dead_letter_of(m: Any) -> DeadLetter:
    seq = getattr(getattr(m, "metadata", None), "sequence", None)
    return DeadLetter(m.subject, m.data, dict(m.headers or {}), str(getattr(seq, "stream", "")))
