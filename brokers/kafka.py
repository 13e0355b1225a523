"""Apache Kafka transport: non-blocking retry topics with partition pause/resume.

Native mapping of the shared policy:

* channel → topic of that name; the record key is the orderId (one order's events
  stay in one partition, in order). Producer `acks=all` + idempotence. Consumers take
  a `getmany` batch (FastStream batch subscriber) and commit explicit offsets only up to
  records that were handled (and their store transaction committed), retried or
  dead-lettered; a batch that fails as a whole is rewound (`seek`) and read again.
* retry → the record is copied to this consumer group's retry tier topic
  `<channel>.<consumer>.retry-<delay>ms` with `x-attempts` and `x-retry-due-at`
  headers, and the source offset is committed. The tier's subscriber (a group of
  its own, named like the tier, so it never rebalances the main group)
  pauses the partition until the head record is due (`pause` + `seek` +
  `call_later(resume)`), so a waiting retry blocks neither the main topic nor other
  partitions. One tier per distinct delay keeps every tier ordered by due time.
* dead letter → `<channel>.DLT` with the envelope plus `x-original-partition`,
  `x-original-offset` (of the first failed delivery).

Ordering trade-off: once a record moves to a retry topic, later records of the same
key are processed before it (as with Spring Kafka's non-blocking retries). The saga's
state machine tolerates out-of-order events; strict per-key ordering would need
blocking retries, which stall the whole partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.kafka.publisher.producer import AioKafkaFastProducerImpl
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from brokers.base import (
    ATTEMPTS_HEADER,
    BATCH_MAX,
    EVENT_ID_HEADER,
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
    due_in_seconds,
    handler_endpoint,
)
from brokers.credentials import kafka_sasl_options
from brokers.foreign_headers import application_headers, shown
from brokers.kafka_groups import GroupWatch, process_client_id
from brokers.kafka_parsing import header_bytes, lenient_parser
from brokers.kafka_provision import provision_topics, used_topics
from brokers.nodes import kafka_bootstrap_servers
from brokers.provisioning import log_outcomes

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from faststream.kafka.publisher.usecase import DefaultPublisher
    from faststream.message import StreamMessage

    from brokers.provisioning import Provisioned


log = logging.getLogger("switchboard.kafka")

DUE_HEADER = "x-retry-due-at"
H_PARTITION = "x-original-partition"
H_OFFSET = "x-original-offset"
REPLAY_GROUP = "switchboard-dlt-replay"
TIER_FETCH_BYTES = 64 * 1024
"""A tier is rewound whenever its head is not due yet, which throws away what was fetched
beyond it: fetch little at a time (the default, 1 MiB, is thousands of records)."""
RETRY_WINDOW_S = 0.05
"""A paused retry tier sleeps at least this long, so records falling due together are fetched
and handled in one batch (each resume re-fetches from the rewound offset); retries may run
up to this much later than due."""
INTERNAL_HEADERS = ("content-type", "correlation_id", DUE_HEADER)
PRODUCER_BATCH_BYTES = 256 * 1024
"""Per-partition producer buffer: the outbox relay sends up to 1,024 events at once, and with
aiokafka's 16 KiB default a send finds its batch full every ~40 events and waits for the
sender. Stays under the broker's 1 MiB message limit."""
SENDER_MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""Largest record `publish_batch` hands to the broker (aiokafka's own check, 1 MiB by default, would
refuse a retry copy or dead letter of a record near the broker's limit: the copy adds envelope
headers). The topic's `max.message.bytes` is the real limit: retry and DLT topics get 64 KiB more
than the broker's `message.max.bytes` (`brokers.kafka_provision`)."""
HEARTBEAT_INTERVAL_MS = 500
"""A service's subscribers share its group id (docs/contract.md) but read different topics, so each
one that joins rebalances the group, and the members learn of it only at their next heartbeat:
at aiokafka's default (3 s) the notification service needed 15 s to start."""
SESSION_TIMEOUT_MS = 6000
"""How long the group waits for a member that vanished (killed, or stopped in the middle of
joining) before its partitions move: the broker's minimum, not aiokafka's 10 s default."""
FATAL_PRODUCER_ERRORS = (
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerClosed,
)
ASSIGNORS = (RoundRobinPartitionAssignor, RangePartitionAssignor)
"""Offered in this order: a group of our consumers alone uses round robin; the Java client offers
range (and cooperative-sticky) by default, so a group shared with Java consumers agrees on range
(offering only round robin, our consumers got InconsistentGroupProtocol and stopped consuming)."""
REVOKE_SETTLE_S = 5.0
"""How long a revocation waits for the batches in flight to be handled and settled (a batch
takes ~0.1 s); the group's rebalance waits for it meanwhile."""


def retry_topic(sub: Subscription, delay_ms: int) -> str:
    return f"{sub.channel}.{sub.consumer}.retry-{delay_ms}ms"


class KafkaTransport(Transport[KafkaBroker]):
    label = "kafka"
    client_producer = AioKafkaFastProducerImpl

    def __init__(self, *args: Any, sasl_mechanism: str = "SCRAM-SHA-512", **kwargs: Any) -> None:
        self._sasl_mechanism = sasl_mechanism
        super().__init__(*args, **kwargs)
        self._publishers: dict[str, DefaultPublisher] = {}
        self._committers: dict[int, _Committer] = {}
        self._gates: dict[str, _CommitGate] = {}
        self._offsets_client: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._sender = _Sender(self.bootstrap_servers, self.client_security)
        self._group_watch = GroupWatch(
            process_client_id(), self._admin_client, self.metrics.join_failed, grace_s=2 * SESSION_TIMEOUT_MS / 1000
        )

    def _build_broker(self) -> KafkaBroker:
        return KafkaBroker(
            self.bootstrap_servers,
            client_id=process_client_id(),
            acks="all",
            enable_idempotence=True,
            max_batch_size=PRODUCER_BATCH_BYTES,
            security=faststream_security(self.client_security),
            **self.broker_options(KafkaPrometheusMiddleware, KafkaTelemetryMiddleware),
        )

    # --- subscriptions -----------------------------------------------------------
    def _register(self, sub: Subscription) -> None:
        router = KafkaRouter(middlewares=[self.policy_middleware(sub)])
        endpoint = handler_endpoint(sub)
        common: dict[str, Any] = {
            "auto_offset_reset": "earliest",
            "ack_policy": AckPolicy.MANUAL,
            "decoder": decode_untouched,
            "batch": True,
            "max_records": BATCH_MAX,
            "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "partition_assignment_strategy": ASSIGNORS,
            "parser": lenient_parser,
        }
        main = router.subscriber(
            sub.channel,
            group_id=self._group(sub.consumer),
            listener=self._gate(sub.channel),
            title=f"{sub.channel}:{sub.consumer}",
            description=sub.description,
            **common,
        )
        main(endpoint)
        self._group_watch.watch(self._group(sub.consumer), sub.channel, sub.consumer, main)
        for delay_ms in self.policy.retry_delays_ms():
            # each retry tier is its own group: its consumer joins without rebalancing the main group
            tier = retry_topic(sub, delay_ms)
            router.subscriber(
                tier,
                group_id=tier,
                listener=self._gate(tier),
                include_in_schema=False,
                max_partition_fetch_bytes=TIER_FETCH_BYTES,
                **common,
            )(endpoint)
        self._broker.include_router(router)
        self._declare_dlt_publisher(sub.dead_letter_channel, sub)

    def _declare_dlt_publisher(self, topic: str, sub: Subscription) -> None:
        """Make the DLT known to AsyncAPI (dead letters are sent with `publish_one`)."""
        if topic not in self._publishers:
            self._publishers[topic] = self._broker.publisher(
                topic,
                title=topic,
                description=f"Dead letters of {sub.channel}: original bytes plus x-* envelope headers.",
                schema=sub.model,
            )

    def listen_dead_letters(self, channel: str, consumer: str, handler: DeadLetterHandler) -> None:
        self._broker.subscriber(
            dead_letter_channel(channel),
            group_id=self._group(consumer),
            auto_offset_reset="earliest",
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            partition_assignment_strategy=ASSIGNORS,
            ack_policy=AckPolicy.ACK,
            parser=lenient_parser,
            decoder=decode_raw,
            title=f"{dead_letter_channel(channel)}:{consumer}",
            description=f"{consumer} reports every dead letter of {channel}.",
        )(dead_letter_endpoint(channel, handler))

    def declare_publisher(self, channel: str, schema: Any, description: str) -> None:
        if channel not in self._publishers:
            self._publishers[channel] = self._broker.publisher(
                channel, title=channel, description=description, schema=schema
            )

    async def publish(self, channel: str, body: bytes, *, key: str, headers: dict[str, str]) -> None:
        await self._broker.publish(
            body,
            channel,
            key=key.encode() if key else None,
            headers=headers,
            correlation_id=headers.get(EVENT_ID_HEADER),
        )

    async def _send_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        producer = await self._sender.producer()
        sends: list[Any] = []
        for m in messages:  # in order: one key's records reach its partition's batch in order
            try:
                sends.append(
                    await producer.send(
                        m.channel, m.body, key=m.key.encode() if m.key else None, headers=_record_headers(m.headers)
                    )
                )
            except Exception as exc:  # noqa: BLE001 - reported as this message's outcome
                sends.append(exc)
        # no timeout of ours: a send we stopped waiting for stays in aiokafka's batch and would
        # reach the topic next to the outbox's re-send; aiokafka fails it once it expires
        outcomes = await confirmations(sends, timeout_s=None)
        await self._sender.replace_if_broken(outcomes)
        return outcomes

    @property
    def bootstrap_servers(self) -> list[str]:
        """BROKER_URL's node list (`brokers.nodes`)."""
        return kafka_bootstrap_servers(self.url)

    @property
    def client_security(self) -> dict[str, str]:
        """SASL options of every client when BROKER_URL carries credentials (`brokers.credentials`)."""
        return kafka_sasl_options(self.url, self._sasl_mechanism)

    def _group(self, consumer: str) -> str:
        """The consumer's group id: its contract name, namespaced when channels are."""
        return f"{self.namespace}.{consumer}" if self.namespace else consumer

    # --- native failure moves ----------------------------------------------------
    async def _deliveries(self, sub: Subscription, msg: StreamMessage[Any]) -> list[Delivery]:  # noqa: ARG002
        """The batch's records; on a retry tier, a partition whose head record is not due yet is
        paused and rewound to it, and its later records wait too (the tier is ordered by due time)."""
        consumer = msg.consumer  # type: ignore[attr-defined]
        deliveries: list[Delivery] = []
        waiting: set[TopicPartition] = set()
        for record, headers in zip(msg.raw_message, msg.batch_headers, strict=True):
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
            deliveries.append(Delivery(record.value or b"", headers, attempt_header(headers), (consumer, record)))
        return deliveries

    def _carried_headers(self, delivery: Delivery) -> dict[str, str]:
        _, record = delivery.native
        headers = {k: v for k, v in delivery.headers.items() if k not in INTERNAL_HEADERS}
        headers.setdefault(H_PARTITION, str(record.partition))
        headers.setdefault(H_OFFSET, str(record.offset))
        return headers

    async def _schedule_retry(self, sub: Subscription, delivery: Delivery, attempt: int, delay_ms: int) -> None:
        headers = self._carried_headers(delivery)
        headers[ATTEMPTS_HEADER] = str(attempt)
        headers[DUE_HEADER] = str(int(time.time() * 1000) + delay_ms)
        await self.publish_one(Outgoing(retry_topic(sub, delay_ms), delivery.body, _key_of(delivery), headers))

    async def _dead_letter(self, sub: Subscription, delivery: Delivery, headers: dict[str, str]) -> None:
        envelope = {**self._carried_headers(delivery), **headers}
        await self.publish_one(Outgoing(sub.dead_letter_channel, delivery.body, _key_of(delivery), envelope))

    async def _settle(self, sub: Subscription, done: list[Delivery], redeliver: list[Delivery]) -> None:  # noqa: ARG002
        """Commit, per partition, past the settled records but never past the first record to
        redeliver, which the consumer is rewound to. Commits are coalesced (`_Committer`)."""
        rewind: dict[tuple[Any, TopicPartition], int] = {}
        for consumer, record in (d.native for d in redeliver):
            key = (consumer, TopicPartition(record.topic, record.partition))
            rewind[key] = min(record.offset, rewind.get(key, record.offset))
        commit: dict[tuple[Any, TopicPartition], int] = {}
        for consumer, record in (d.native for d in done):
            key = (consumer, TopicPartition(record.topic, record.partition))
            commit[key] = max(record.offset + 1, commit.get(key, 0))
        for (consumer, tp), offset in rewind.items():
            consumer.seek(tp, offset)
        for (consumer, tp), next_offset in commit.items():
            self._committer(consumer, tp.topic).mark(tp, min(next_offset, rewind.get((consumer, tp), next_offset)))

    async def drain(self) -> None:
        """Also wait for the offset commits of what was settled: the consumers stop right after."""
        await super().drain()
        await asyncio.gather(*(committer.committed() for committer in self._committers.values()))

    def _gate(self, topic: str) -> _CommitGate:
        gate = self._gates.get(topic)
        if gate is None:
            gate = self._gates[topic] = _CommitGate(self.settled)
        return gate

    def _committer(self, consumer: AIOKafkaConsumer, topic: str) -> _Committer:
        committer = self._committers.get(id(consumer))
        if committer is None or committer.consumer is not consumer:
            committer = self._committers[id(consumer)] = _Committer(consumer, self._gate(topic))
        return committer

    # --- lag -----------------------------------------------------------------------
    async def _clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._offsets_client is None or self._admin is None:
            offsets = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False, **self.client_security
            )
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, **self.client_security)
            await offsets.start()
            await admin.start()
            self._offsets_client, self._admin = offsets, admin
        return self._offsets_client, self._admin

    async def _admin_client(self) -> AIOKafkaAdminClient:
        return (await self._clients())[1]

    async def consumed_channels_available(self, within_s: float) -> bool:
        """Also False while a subscriber is out of its consumer group (`brokers.kafka_groups`)."""
        return self._group_watch.joined and await super().consumed_channels_available(within_s)

    async def consumer_lag(self, channel: str, consumer: str) -> int | None:
        """End offset − committed offset of the group, summed over the topic's partitions."""
        topic, group = channel, self._group(consumer)
        offsets, admin = await self._clients()
        partitions = await offsets._client.fetch_all_metadata()
        ids = partitions.partitions_for_topic(topic)
        if not ids:
            return None
        tps = [TopicPartition(topic, p) for p in ids]
        ends = await offsets.end_offsets(tps)
        starts = await offsets.beginning_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        waiting = 0
        for tp in tps:
            meta = committed.get(tp)
            position = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
            waiting += max(ends[tp] - position, 0)
        return waiting

    # --- provisioning (brokers.kafka_provision) -------------------------------------
    async def start_extras(self) -> None:
        """Create the topics this service uses before its subscribers and outbox start (PROVISION
        off: none; FastStream's subscribers still ask for theirs, which the broker may refuse)."""
        if self.provisioning.enabled:
            log_outcomes(await self.provision(), log)
        self._group_watch.start()

    async def provision(self, *, dry_run: bool = False) -> list[Provisioned]:
        """Every topic subscribed or published: channels, their retry tiers and DLTs."""
        _, admin = await self._clients()
        return await provision_topics(admin, used_topics(self._broker), self.provisioning, dry_run=dry_run)

    async def stop_extras(self) -> None:
        await self._group_watch.stop()
        await self._sender.stop()
        for client in (self._offsets_client, self._admin):
            if client is not None:
                await client.close() if isinstance(client, AIOKafkaAdminClient) else await client.stop()
        self._offsets_client = self._admin = None

    # --- dead-letter tooling -----------------------------------------------------
    async def _read_dlt(self, channel: str, group: str | None, limit: int) -> tuple[AIOKafkaConsumer, list[Any]]:
        """Records of `<channel>.DLT` up to its end offsets *at the start* (and `limit`): a replay
        whose messages fail again must not pick up its own new dead letters."""
        dlt = channel + ".DLT"
        consumer = AIOKafkaConsumer(
            dlt,
            bootstrap_servers=self.bootstrap_servers,
            **self.client_security,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(dlt, p) for p in consumer.partitions_for_topic(dlt) or ()]
        ends = await consumer.end_offsets(tps) if tps else {}
        records: list[Any] = []
        deadline = time.monotonic() + 10
        while len(records) < limit and time.monotonic() < deadline and any(ends.values()):
            batch = await consumer.getmany(timeout_ms=300, max_records=limit - len(records))
            for tp, recs in batch.items():
                records.extend(r for r in recs if r.offset < ends[tp])
            assigned = consumer.assignment()
            if assigned and all([await consumer.position(tp) >= ends.get(tp, 0) for tp in assigned]):
                break
        return consumer, records[:limit]

    async def list_dead_letters(self, channel: str, limit: int) -> list[DeadLetter]:
        consumer, records = await self._read_dlt(channel, None, limit)
        await consumer.stop()
        return [_dead_letter_of(r) for r in records]

    async def replay_dead_letters(self, channel: str, limit: int) -> list[DeadLetter]:
        consumer, records = await self._read_dlt(channel, REPLAY_GROUP, limit)
        try:
            letters = [_dead_letter_of(r) for r in records]
            producer = await self._sender.producer()
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


class _Sender:
    """The producer `publish_batch` sends with (acks=all, idempotent), created on first use. An
    idempotent producer that meets a fatal error (e.g. `OutOfOrderSequenceNumber` after a partition
    leader was lost) fails every later send, so it is replaced (a new producer id) before the next."""

    def __init__(self, bootstrap_servers: list[str], security: dict[str, str] | None = None) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._security = security or {}
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def producer(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap_servers,
                    **self._security,
                    acks="all",
                    enable_idempotence=True,
                    max_batch_size=PRODUCER_BATCH_BYTES,
                    max_request_size=SENDER_MAX_REQUEST_BYTES,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def replace_if_broken(self, outcomes: Sequence[BaseException | None]) -> None:
        fatal = next((o for o in outcomes if is_fatal_producer_error(o)), None)
        if fatal is None or self._producer is None:
            return
        log.warning("Kafka producer failed for good (%s: %s); a new one sends from now on", type(fatal).__name__, fatal)
        broken, self._producer = self._producer, None
        with contextlib.suppress(Exception):
            await broken.stop()

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


def is_fatal_producer_error(outcome: BaseException | None) -> bool:
    """An error after which the producer sends nothing more: a broken idempotence sequence or
    epoch, or its sender task died (aiokafka then wraps the cause in a bare `KafkaError`)."""
    return isinstance(outcome, FATAL_PRODUCER_ERRORS) or type(outcome) is KafkaError


class _CommitGate(ConsumerRebalanceListener):  # type: ignore[misc]
    """Keeps one subscriber's explicit commits out of its group's rebalances. aiokafka answers a
    commit that meets a new generation by dropping the member id and joining anew, and the
    group then waits a whole session timeout for the vanished member (measured: 10 s without
    consuming whenever a second subscriber of a service joined its group).

    When partitions are revoked, the batches already handed to the handlers are first
    finished and settled (at most REVOKE_SETTLE_S), and everything settled is committed in the
    revocation, with the generation still valid: the partitions' next owner starts after them
    instead of handling them again (measured before: each start of the inventory service on a
    backlog handled the 1,024 records in flight twice, at the join of its second subscriber).
    Offsets settled later wait for the new assignment."""

    def __init__(self, settled: Callable[[], Awaitable[None]]) -> None:
        self.open = True
        self.committers: list[_Committer] = []
        self._settled = settled

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            try:
                async with asyncio.timeout(REVOKE_SETTLE_S):
                    await self._settled()
            except TimeoutError:
                log.warning(
                    "batches still running after %.0f s of a rebalance; their records come again", REVOKE_SETTLE_S
                )
        for committer in self.committers:
            await committer.flush()
        self.open = False

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.open = True
        for committer in self.committers:
            committer.keep_only(set(assigned))
            committer.kick()


class _Committer:
    """Coalesces offset commits of one consumer (see KafkaTransport._settle)."""

    def __init__(self, consumer: AIOKafkaConsumer, gate: _CommitGate) -> None:
        self.consumer = consumer
        self.gate = gate
        gate.committers.append(self)
        self._pending: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    def mark(self, tp: TopicPartition, next_offset: int) -> None:
        self._pending[tp] = max(next_offset, self._pending.get(tp, 0))
        self.kick()

    def kick(self) -> None:
        if self.gate.open and self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self.flush())

    def keep_only(self, assigned: set[TopicPartition]) -> None:
        """Forget offsets of partitions another member owns now (it reads them again)."""
        self._pending = {tp: offset for tp, offset in self._pending.items() if tp in assigned}

    async def committed(self) -> None:
        """Return once nothing marked is left to commit (or the gate holds it: the partitions
        are being reassigned and their next owner reads those records again)."""
        if self._task is not None:
            await self._task
        await self.flush()

    async def flush(self) -> None:
        while self._pending and self.gate.open:
            batch, self._pending = self._pending, {}
            try:
                await self.consumer.commit(batch)
            except Exception as exc:  # noqa: BLE001 - e.g. a rebalance: the records come again, handlers are idempotent
                log.warning("offset commit of %d partition(s) failed: %s", len(batch), exc)


def faststream_security(options: dict[str, str]) -> BaseSecurity | None:
    """FastStream's form of `kafka_sasl_options` (None: PLAINTEXT)."""
    if not options:
        return None
    kinds: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
        "PLAIN": SASLPlaintext,
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
    }
    return kinds[options["sasl_mechanism"]](options["sasl_plain_username"], options["sasl_plain_password"])


def _key_of(delivery: Delivery) -> str:
    """The record's key as `Outgoing.key` ("" for a record without one: it is sent without one)."""
    _, record = delivery.native
    return record.key.decode(errors="replace") if record.key else ""


def _record_headers(headers: dict[str, str]) -> list[tuple[str, bytes]]:
    """The headers FastStream's `publish` would write: a content type, the correlation id."""
    carried = {"content-type": "application/json", "correlation_id": headers.get(EVENT_ID_HEADER, ""), **headers}
    return [(name, header_bytes(value)) for name, value in carried.items()]


def _resume(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
    if tp in consumer.assignment():
        consumer.resume(tp)


def _dead_letter_of(record: Any) -> DeadLetter:
    """The record as a dead letter: header values as bytes (`raw_headers`) and shown losslessly as text."""
    raw = tuple((k, bytes(v or b"")) for k, v in (record.headers or ()))
    headers = {k: str(shown(v)) for k, v in raw}
    return DeadLetter(record.topic, record.value, headers, f"{record.partition}:{record.offset}", raw, record.key)
