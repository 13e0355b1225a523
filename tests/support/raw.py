"""Raw broker clients (aiokafka, aio-pika, nats-py, not the project's transports): the one
raw-client module of the tests and the benchmarks (`bench` imports it; tests never import `bench`).

Foreign clients: the contract's channel mapping seen from outside the project, the way any other
team's client would (Kafka topic / RabbitMQ exchange and DLT queue / NATS subject kept in a
JetStream stream): `publish`, `tap` + `tapped`, `dead_letters`.

Benchmarks: the ceiling, preloading and taps. Durability is the services' own: Kafka `acks=all` +
idempotence; RabbitMQ publisher confirms of persistent messages to a durable fanout exchange feeding
a quorum queue; JetStream acked publishes into a file stream. Consumers acknowledge after processing
(Kafka: commit per `getmany` batch; RabbitMQ: manual multiple-ack under a prefetch; NATS: pull fetch
batches, ack each). A `Tap` (`watch`) observes a channel from outside (no effect on the system under
test) and records when each event (eventType, orderId) first arrived, on `time.monotonic()`, which is
one clock for every process of the machine.

`raw_client(broker)`: kafka, rabbit, nats, or a `RawClient` subclass registered under the
entry-point group `switchboard.test_clients` with the broker's name (constructed with no arguments;
a `BenchClient` subclass serves the benchmarks too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import aio_pika
import nats
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

ENTRY_POINT_GROUP = "switchboard.test_clients"

PUBLISH_WINDOW = 256
"""Publishes in flight at once (RabbitMQ confirms, JetStream acks)."""
RABBIT_PREFETCH = 256
RABBIT_ACK_EVERY = 64
FETCH_BATCH = 256
KAFKA_BATCH = 1000
SERVICE_CHANNELS = ("order-events", "inventory-events", "payment-events")
SERVICE_CONSUMERS = ("order-service", "inventory-service", "payment-service", "notification-service")
RAW_CHANNEL = "bench-raw"
RAW_OUT_CHANNEL = "bench-raw-out"
RAW_CONSUMER = "bench-raw"
RELAY_CONSUMER = "bench-relay"


@dataclass
class ConsumeResult:
    count: int
    seconds: float
    """From creating the consumer (connect, join, subscribe included) to the last ack."""
    first_s: float | None
    """From creating the consumer to the first message."""
    marks: list[tuple[int, float]] = field(default_factory=list)
    """(messages done, monotonic time) after each batch, for `middle_rate` (relay only)."""

    def middle_rate(self) -> float | None:
        """Messages/s over the middle 80 % of the run (from the 10 % to the 90 % mark)."""
        low = next(((c, t) for c, t in self.marks if c >= self.count * 0.1), None)
        high = next(((c, t) for c, t in self.marks if c >= self.count * 0.9), None)
        if low is None or high is None or high[1] <= low[1]:
            return None
        return (high[0] - low[0]) / (high[1] - low[1])

    @property
    def steady_seconds(self) -> float | None:
        return self.seconds - self.first_s if self.first_s is not None else None


@dataclass
class Tap:
    """Arrival times of the events seen on one channel, first arrival per (eventType, orderId)."""

    channel: str
    arrivals: dict[str, dict[str, float]] = field(default_factory=dict)
    duplicates: int = 0
    undecodable: int = 0
    closer: Any = None

    def record(self, body: bytes) -> None:
        now = time.monotonic()
        try:
            event = json.loads(body)
            event_type, order_id = str(event.get("eventType")), str(event.get("orderId"))
        except (ValueError, AttributeError):
            self.undecodable += 1
            return
        seen = self.arrivals.setdefault(event_type, {})
        if order_id in seen:
            self.duplicates += 1
        else:
            seen[order_id] = now

    def count(self, event_type: str, prefix: str = "") -> int:
        seen = self.arrivals.get(event_type, {})
        if not prefix:
            return len(seen)
        return sum(1 for order_id in seen if order_id.startswith(prefix))

    def times(self, event_type: str, prefix: str = "") -> list[float]:
        return [t for o, t in self.arrivals.get(event_type, {}).items() if o.startswith(prefix)]

    async def close(self) -> None:
        if self.closer is not None:
            closer, self.closer = self.closer, None
            with contextlib.suppress(Exception):
                await closer()


@dataclass
class RawMessage:
    body: bytes
    headers: dict[str, str]
    key: bytes | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    def order_id(self) -> str | None:
        try:
            return self.json().get("orderId")
        except (ValueError, AttributeError):
            return None


class RawClient(ABC):
    """One broker's raw client. `url`: the broker's (None: the class's DEFAULT_URL)."""

    name: str
    DEFAULT_URL: str

    def __init__(self, url: str | None = None) -> None:
        self.url = url or self.DEFAULT_URL

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    # --- a foreign client (tests) ----------------------------------------------------
    @abstractmethod
    async def publish(self, channel: str, body: bytes, key: str | None = None) -> None:
        """Publish like a foreign producer would, onto the contract's mapping of `channel`."""

    @abstractmethod
    async def tap(self, channel: str) -> Any:
        """Start observing `channel` from now on; returns a token for `tapped`."""

    @abstractmethod
    async def tapped(self, token: Any) -> list[RawMessage]:
        """Every message published on the tapped channel since `tap`."""

    @abstractmethod
    async def dead_letters(self, channel: str) -> list[RawMessage]:
        """Every message currently on `<channel>.DLT`, read without consuming it."""


class BenchClient(RawClient):
    """A raw client the benchmarks can use too: the ceiling's channel, bulk produce, consume, relay,
    watching arrivals and cleaning up."""

    @abstractmethod
    async def create_raw_channel(self, channel: str) -> None:
        """The ceiling's channel and its consumer's durable storage (topic / quorum queue / stream)."""

    @abstractmethod
    async def produce(self, channel: str, items: list[tuple[str, bytes]]) -> float:
        """Publish (key, body) pairs durably; returns the seconds from the first publish until the
        broker confirmed every one (connection set-up excluded)."""

    @abstractmethod
    async def consume(self, channel: str, n: int) -> ConsumeResult:
        """Consume `n` messages of the ceiling's channel, acknowledging after processing."""

    @abstractmethod
    async def relay(self, channel: str, out_channel: str, n: int) -> ConsumeResult:
        """Consume `n` messages of the ceiling's channel under a second consumer name and, for
        each, publish an outcome to `out_channel` with the producer's durability; a message is
        acknowledged only after its outcome was confirmed. The raw client doing the consumer
        path's broker work: one input in, one durable output out."""

    @abstractmethod
    async def watch(self, channel: str) -> Tap:
        """Start recording arrivals on `channel`; the tap sees everything published from now on
        (Kafka and NATS also what was published before)."""

    @abstractmethod
    async def delete_namespace(self, ns: str) -> None:
        """Best effort: remove the broker objects the benchmark and the services made for `ns`."""


def process(body: bytes) -> None:
    """What the ceiling's consumers do with a message: decode it."""
    json.loads(body)


def outcome(body: bytes) -> tuple[str, bytes]:
    """What the relay publishes for a message: (key, body) of an InventoryReserved-shaped event."""
    event = json.loads(body)
    event["eventType"] = "InventoryReserved"
    return str(event.get("orderId", "")), json.dumps(event).encode()


async def _windowed(items: Iterable[tuple[str, bytes]], publish: Any, window: int = PUBLISH_WINDOW) -> None:
    it = iter(items)

    async def worker() -> None:
        for key, body in it:
            await publish(key, body)

    await asyncio.gather(*(worker() for _ in range(window)))


# --------------------------------------------------------------------------- Kafka
class KafkaRaw(BenchClient):
    name = "kafka"
    DEFAULT_URL = "localhost:9092"

    def __init__(self, url: str | None = None) -> None:
        super().__init__(url)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.url, acks="all")
        """`publish`'s. It never asks for a topic it did not publish to, so it re-creates none
        that a benchmark deleted (the benchmarks' producers live for one `produce`)."""
        self.admin: AIOKafkaAdminClient | None = None

    async def connect(self) -> None:
        await self.producer.start()
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.url)
        await self.admin.start()

    async def close(self) -> None:
        await self.producer.stop()
        if self.admin is not None:
            await self.admin.close()

    # --- a foreign client ----------------------------------------------------------------
    async def publish(self, channel: str, body: bytes, key: str | None = None) -> None:
        await self.producer.send_and_wait(channel, body, key=key.encode() if key else None)

    async def _read(self, topic: str, starts: dict[TopicPartition, int] | None) -> list[RawMessage]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.url, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            if not tps:
                return []
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                consumer.seek(tp, (starts or {}).get(tp, 0))
            out: list[RawMessage] = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                    break
                batch = await consumer.getmany(timeout_ms=300)
                for records in batch.values():
                    out.extend(RawMessage(r.value, {k: v.decode() for k, v in r.headers}, r.key) for r in records)
            return out
        finally:
            await consumer.stop()

    async def tap(self, channel: str) -> Any:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.url)
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(channel, p) for p in consumer.partitions_for_topic(channel) or {0}]
            return channel, await consumer.end_offsets(tps)
        finally:
            await consumer.stop()

    async def tapped(self, token: Any) -> list[RawMessage]:
        channel, starts = token
        return await self._read(channel, starts)

    async def dead_letters(self, channel: str) -> list[RawMessage]:
        return await self._read(channel + ".DLT", None)

    # --- benchmarks --------------------------------------------------------------------
    async def _partitions(self, topic: str, create: bool) -> list[int]:
        assert self.admin is not None
        if create:
            await self.admin.create_topics([NewTopic(topic, 1, 1)])  # an existing topic is left as it is
        for _ in range(50):
            described = await self.admin.describe_topics([topic])
            parts = [p["partition"] for t in described if t.get("error_code", 0) == 0 for p in t["partitions"]]
            if parts:
                return sorted(parts)
            await asyncio.sleep(0.1)
        raise RuntimeError(f"Kafka topic {topic} has no partitions")

    async def create_raw_channel(self, channel: str) -> None:
        await self._partitions(channel, create=True)

    def _durable_producer(self) -> AIOKafkaProducer:
        """The services' producer durability: acks=all, idempotent."""
        return AIOKafkaProducer(bootstrap_servers=self.url, acks="all", enable_idempotence=True)

    def _backlog_consumer(self, channel: str, name: str) -> AIOKafkaConsumer:
        """A consumer of `channel` from its start, committing explicitly, in its own group `name`."""
        return AIOKafkaConsumer(
            channel,
            bootstrap_servers=self.url,
            group_id=f"{channel}.{name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=KAFKA_BATCH,
        )

    async def produce(self, channel: str, items: list[tuple[str, bytes]]) -> float:
        # a producer per call: one that lives on keeps asking for the metadata of its topics, and
        # with auto.create.topics.enable that re-creates a topic after the benchmark deleted it
        producer = self._durable_producer()
        await producer.start()
        try:
            await producer.partitions_for(channel)
            start = time.monotonic()
            futures = []
            for key, body in items:
                futures.append(await producer.send(channel, body, key=key.encode()))
                if len(futures) >= KAFKA_BATCH * 10:
                    await asyncio.gather(*futures)
                    futures.clear()
            await asyncio.gather(*futures)
            return time.monotonic() - start
        finally:
            await producer.stop()

    async def consume(self, channel: str, n: int) -> ConsumeResult:
        start = time.monotonic()
        consumer = self._backlog_consumer(channel, RAW_CONSUMER)
        await consumer.start()
        count, first = 0, None
        try:
            while count < n:
                batch = await consumer.getmany(timeout_ms=500, max_records=KAFKA_BATCH)
                for records in batch.values():
                    for record in records:
                        process(record.value)
                        count += 1
                if batch:
                    first = first if first is not None else time.monotonic() - start
                    await consumer.commit()
            return ConsumeResult(count, time.monotonic() - start, first)
        finally:
            await consumer.stop()

    async def relay(self, channel: str, out_channel: str, n: int) -> ConsumeResult:
        await self._partitions(out_channel, create=True)
        start = time.monotonic()
        producer = self._durable_producer()
        consumer = self._backlog_consumer(channel, RELAY_CONSUMER)
        await producer.start()
        await consumer.start()
        count, first, marks = 0, None, []
        try:
            while count < n:
                batch = await consumer.getmany(timeout_ms=500, max_records=KAFKA_BATCH)
                futures = []
                for records in batch.values():
                    for record in records:
                        key, body = outcome(record.value)
                        futures.append(await producer.send(out_channel, body, key=key.encode()))
                        count += 1
                if batch:
                    first = first if first is not None else time.monotonic() - start
                    await asyncio.gather(*futures)
                    await consumer.commit()
                    marks.append((count, time.monotonic()))
            return ConsumeResult(count, time.monotonic() - start, first, marks)
        finally:
            await consumer.stop()
            await producer.stop()

    async def watch(self, channel: str) -> Tap:
        parts = await self._partitions(channel, create=True)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.url, enable_auto_commit=False, group_id=None)
        await consumer.start()
        tps = [TopicPartition(channel, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        tap = Tap(channel)

        async def run() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=100, max_records=2000)
                for records in batch.values():
                    for record in records:
                        tap.record(record.value)

        task = asyncio.create_task(run(), name=f"tap:{channel}")

        async def closer() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await consumer.stop()

        tap.closer = closer
        return tap

    async def delete_namespace(self, ns: str) -> None:
        assert self.admin is not None
        topics = [t for t in await self.admin.list_topics() if t.startswith(ns + ".")]
        if topics:
            await self.admin.delete_topics(topics)


# --------------------------------------------------------------------------- RabbitMQ
class RabbitRaw(BenchClient):
    name = "rabbit"
    DEFAULT_URL = "amqp://guest:guest@localhost:5672/"

    def __init__(self, url: str | None = None) -> None:
        super().__init__(url)
        self.connection: Any = None

    async def connect(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    # --- a foreign client ----------------------------------------------------------------
    async def publish(self, channel: str, body: bytes, key: str | None = None) -> None:
        chan = await self.connection.channel(publisher_confirms=True)
        try:
            exchange = await chan.get_exchange(channel, ensure=True)
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=key or ""
            )
        finally:
            await chan.close()

    async def tap(self, channel: str) -> Any:
        chan = await self.connection.channel()
        # durable, so the tap survives a broker restart; x-expires cleans it up afterwards
        queue = await chan.declare_queue(f"tap-{uuid.uuid4().hex}", durable=True, arguments={"x-expires": 600_000})
        await queue.bind(channel, routing_key="")  # any binding key: the channel's exchange fans out
        return chan, queue

    async def tapped(self, token: Any) -> list[RawMessage]:
        _, queue = token
        return await self._peek(queue)

    async def _peek(self, queue: Any) -> list[RawMessage]:
        held, out = [], []
        while (incoming := await queue.get(no_ack=False, fail=False)) is not None:
            held.append(incoming)
            headers = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (incoming.headers or {}).items()}
            out.append(RawMessage(incoming.body, headers, (incoming.routing_key or "").encode()))
        for incoming in held:
            await incoming.nack(requeue=True)
        return out

    async def dead_letters(self, channel: str) -> list[RawMessage]:
        chan = await self.connection.channel()
        try:
            queue = await chan.declare_queue(channel + ".DLT", passive=True)
            return await self._peek(queue)
        finally:
            with contextlib.suppress(Exception):
                await chan.close()

    # --- benchmarks --------------------------------------------------------------------
    @staticmethod
    def raw_queue(channel: str, consumer: str = RAW_CONSUMER) -> str:
        return f"{channel}.{consumer}"

    async def _exchange(self, chan: Any, channel: str) -> Any:
        # the services' own declaration (durable fanout exchange), so either side may come first
        return await chan.declare_exchange(channel, aio_pika.ExchangeType.FANOUT, durable=True)

    async def create_raw_channel(self, channel: str) -> None:
        chan = await self.connection.channel()
        try:
            exchange = await self._exchange(chan, channel)
            for consumer in (RAW_CONSUMER, RELAY_CONSUMER):
                queue = await chan.declare_queue(
                    self.raw_queue(channel, consumer), durable=True, arguments={"x-queue-type": "quorum"}
                )
                await queue.bind(exchange, routing_key="#")
        finally:
            await chan.close()

    async def produce(self, channel: str, items: list[tuple[str, bytes]]) -> float:
        chan = await self.connection.channel(publisher_confirms=True)
        try:
            exchange = await chan.get_exchange(channel)  # passive: the channel must exist

            async def publish(key: str, body: bytes) -> None:
                message = aio_pika.Message(
                    body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json"
                )
                await exchange.publish(message, routing_key=key)

            start = time.monotonic()
            await _windowed(items, publish)
            return time.monotonic() - start
        finally:
            await chan.close()

    async def consume(self, channel: str, n: int) -> ConsumeResult:
        start = time.monotonic()
        chan = await self.connection.channel()
        count, first = 0, None
        try:
            await chan.set_qos(prefetch_count=RABBIT_PREFETCH)
            queue = await chan.get_queue(self.raw_queue(channel))
            async with queue.iterator() as messages:
                async for message in messages:
                    process(message.body)
                    count += 1
                    first = first if first is not None else time.monotonic() - start
                    if count % RABBIT_ACK_EVERY == 0 or count >= n:
                        await message.ack(multiple=True)
                    if count >= n:
                        break
            return ConsumeResult(count, time.monotonic() - start, first)
        finally:
            with contextlib.suppress(Exception):
                await chan.close()

    async def relay(self, channel: str, out_channel: str, n: int) -> ConsumeResult:
        start = time.monotonic()
        chan = await self.connection.channel(publisher_confirms=True)
        count, first, marks = 0, None, []
        try:
            out = await self._exchange(chan, out_channel)
            # outputs are routed somewhere, as the services' are to the benchmark's tap queue
            sink = await chan.declare_queue(exclusive=True, auto_delete=True)
            await sink.bind(out, routing_key="#")
            await chan.set_qos(prefetch_count=RABBIT_PREFETCH)
            queue = await chan.get_queue(self.raw_queue(channel, RELAY_CONSUMER))
            pending: list[Any] = []

            async def publish(message: Any) -> None:
                key, body = outcome(message.body)
                reply = aio_pika.Message(
                    body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json"
                )
                await out.publish(reply, routing_key=key)

            async with queue.iterator() as messages:
                async for message in messages:
                    pending.append(message)
                    count += 1
                    first = first if first is not None else time.monotonic() - start
                    if len(pending) >= RABBIT_ACK_EVERY or count >= n:
                        await asyncio.gather(*(publish(m) for m in pending))
                        await pending[-1].ack(multiple=True)
                        pending.clear()
                        marks.append((count, time.monotonic()))
                    if count >= n:
                        break
            return ConsumeResult(count, time.monotonic() - start, first, marks)
        finally:
            with contextlib.suppress(Exception):
                await chan.close()

    async def watch(self, channel: str) -> Tap:
        chan = await self.connection.channel()
        exchange = await self._exchange(chan, channel)
        queue = await chan.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        tap = Tap(channel)

        async def on_message(message: Any) -> None:
            tap.record(message.body)

        await queue.consume(on_message, no_ack=True)
        tap.closer = chan.close
        return tap

    async def delete_namespace(self, ns: str) -> None:
        queues = [f"{ns}.{RAW_CHANNEL}.{RAW_CONSUMER}", f"{ns}.{RAW_CHANNEL}.{RELAY_CONSUMER}"]
        for channel in SERVICE_CHANNELS:
            queues.append(f"{ns}.{channel}.DLT")
            for consumer in SERVICE_CONSUMERS:
                base = f"{ns}.{channel}.{consumer}"
                queues += [base, f"{base}.retry-200ms", f"{base}.retry-2000ms"]
        chan = await self.connection.channel()
        try:
            for name in queues:  # deleting a queue that does not exist is not an error in AMQP 0-9-1
                await chan.queue_delete(name)
            for channel in (*SERVICE_CHANNELS, RAW_CHANNEL, RAW_OUT_CHANNEL):
                await chan.exchange_delete(f"{ns}.{channel}")
        finally:
            with contextlib.suppress(Exception):
                await chan.close()


# --------------------------------------------------------------------------- NATS JetStream
def stream_name(channel: str) -> str:
    """The services' stream naming (brokers.nats.stream_name): dots become underscores."""
    return channel.replace(".", "_")


class NatsRaw(BenchClient):
    name = "nats"
    DEFAULT_URL = "nats://127.0.0.1:4222"

    def __init__(self, url: str | None = None) -> None:
        super().__init__(url)
        self.nc: Any = None
        self.js: Any = None

    async def connect(self) -> None:
        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream(timeout=10)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    # --- a foreign client ----------------------------------------------------------------
    async def publish(self, channel: str, body: bytes, key: str | None = None) -> None:  # noqa: ARG002
        await self.js.publish(channel, body)

    async def _read(self, subject: str, start_seq: int | None) -> list[RawMessage]:
        stream = await self.js.find_stream_name_by_subject(subject)
        info = await self.js.stream_info(stream)
        last = info.state.last_seq
        # no acks: an explicit-ack reader would stall at the server's max_ack_pending (1,000)
        config: dict[str, Any] = {"deliver_policy": "all", "ack_policy": "none"}
        if start_seq is not None:
            config = {**config, "deliver_policy": "by_start_sequence", "opt_start_seq": start_seq}
        sub = await self.js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(**config))
        out: list[RawMessage] = []
        try:
            while True:
                try:
                    msgs = await sub.fetch(256, timeout=1.0)
                except NatsTimeout:
                    break
                for m in msgs:
                    out.append(RawMessage(m.data, dict(m.headers or {})))
                if msgs and msgs[-1].metadata.sequence.stream >= last:
                    break
        finally:
            await sub.unsubscribe()
        return out

    async def tap(self, channel: str) -> Any:
        info = await self.js.stream_info(await self.js.find_stream_name_by_subject(channel))
        return channel, info.state.last_seq + 1

    async def tapped(self, token: Any) -> list[RawMessage]:
        channel, start = token
        return await self._read(channel, start)

    async def dead_letters(self, channel: str) -> list[RawMessage]:
        try:
            return await self._read(channel + ".DLT", None)
        except Exception:  # noqa: BLE001 - no DLT stream yet means no dead letters
            return []

    # --- benchmarks --------------------------------------------------------------------
    async def _ensure_stream(self, channel: str) -> str:
        name = stream_name(channel)
        try:
            await self.js.stream_info(name)
        except NotFoundError:
            await self.js.add_stream(name=name, subjects=[channel])  # file storage, as the services
        return name

    async def create_raw_channel(self, channel: str) -> None:
        await self._ensure_stream(channel)

    async def produce(self, channel: str, items: list[tuple[str, bytes]]) -> float:
        async def publish(_key: str, body: bytes) -> None:
            await self.js.publish(channel, body)

        start = time.monotonic()
        await _windowed(items, publish)
        return time.monotonic() - start

    async def consume(self, channel: str, n: int) -> ConsumeResult:
        async def ack_each(messages: list[Any]) -> None:
            for message in messages:
                process(message.data)
                await message.ack()

        return await self._pull(channel, RAW_CONSUMER, n, ack_each)

    async def relay(self, channel: str, out_channel: str, n: int) -> ConsumeResult:
        await self._ensure_stream(out_channel)

        async def relay_one(message: Any) -> None:
            await self.js.publish(out_channel, outcome(message.data)[1])
            await message.ack()

        async def relay_all(messages: list[Any]) -> None:
            await asyncio.gather(*(relay_one(m) for m in messages))

        return await self._pull(channel, RELAY_CONSUMER, n, relay_all)

    async def _pull(
        self, channel: str, durable: str, n: int, handle: Callable[[list[Any]], Awaitable[None]]
    ) -> ConsumeResult:
        """Fetch `n` messages of `channel` as `durable`, a batch at a time, each batch through `handle`."""
        start = time.monotonic()
        psub = await self.js.pull_subscribe(channel, durable=durable, stream=stream_name(channel))
        count, first, marks = 0, None, []
        try:
            while count < n:
                try:
                    messages = await psub.fetch(min(FETCH_BATCH, n - count), timeout=2.0)
                except NatsTimeout:
                    continue
                first = first if first is not None else time.monotonic() - start
                await handle(messages)
                count += len(messages)
                marks.append((count, time.monotonic()))
            return ConsumeResult(count, time.monotonic() - start, first, marks)
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def watch(self, channel: str) -> Tap:
        stream = await self._ensure_stream(channel)
        tap = Tap(channel)

        async def on_message(message: Any) -> None:
            tap.record(message.data)

        sub = await self.js.subscribe(
            channel,
            stream=stream,
            cb=on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            pending_msgs_limit=1_000_000,
        )
        tap.closer = sub.unsubscribe
        return tap

    async def delete_namespace(self, ns: str) -> None:
        for channel in (*SERVICE_CHANNELS, RAW_CHANNEL, RAW_OUT_CHANNEL):
            for name in (stream_name(f"{ns}.{channel}"), stream_name(f"{ns}.{channel}") + "-DLT"):
                with contextlib.suppress(NotFoundError):
                    await self.js.delete_stream(name)


BUILT_IN: dict[str, type[BenchClient]] = {"kafka": KafkaRaw, "rabbit": RabbitRaw, "nats": NatsRaw}


def known_brokers() -> list[str]:
    """The broker names `raw_client` knows, sorted."""
    return sorted({*BUILT_IN, *(entry.name for entry in entry_points(group=ENTRY_POINT_GROUP))})


def raw_client(broker: str) -> RawClient:
    """The raw client of `broker` on its default URL: a built-in one (kafka, rabbit, nats), else the
    `RawClient` subclass registered as `broker` in the entry-point group `switchboard.test_clients`,
    constructed with no arguments."""
    if broker in BUILT_IN:
        return BUILT_IN[broker]()
    for entry in entry_points(group=ENTRY_POINT_GROUP, name=broker):
        loaded = entry.load()
        if not (isinstance(loaded, type) and issubclass(loaded, RawClient)):
            raise TypeError(f"entry point {broker} = {entry.value} ({ENTRY_POINT_GROUP}) is not a RawClient subclass")
        return loaded()
    raise LookupError(
        f"no raw client for broker {broker!r}; known: {', '.join(known_brokers())} (another one registers a "
        f"RawClient subclass under the entry-point group {ENTRY_POINT_GROUP!r} with the broker's name)"
    )
