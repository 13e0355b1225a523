"""Foreign clients: the contract's channel mapping seen from outside the project.

These use aiokafka, aio-pika and nats-py directly (not the project's transports),
the way any other team's client would: Kafka topic / RabbitMQ exchange and DLT
queue / NATS subject kept in a JetStream stream.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import aio_pika
import nats
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from nats.errors import TimeoutError as NatsTimeout


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
    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

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


class KafkaRaw(RawClient):
    def __init__(self, url: str = "localhost:9092") -> None:
        self.url = url
        self.producer = AIOKafkaProducer(bootstrap_servers=url, acks="all")

    async def connect(self) -> None:
        await self.producer.start()

    async def close(self) -> None:
        await self.producer.stop()

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


class RabbitRaw(RawClient):
    def __init__(self, url: str = "amqp://guest:guest@localhost:5672/") -> None:
        self.url = url
        self.connection: Any = None

    async def connect(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url)

    async def close(self) -> None:
        await self.connection.close()

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


class NatsRaw(RawClient):
    def __init__(self, url: str = "nats://localhost:4222") -> None:
        self.url = url
        self.nc: Any = None

    async def connect(self) -> None:
        self.nc = await nats.connect(self.url)

    async def close(self) -> None:
        await self.nc.close()

    async def publish(self, channel: str, body: bytes, key: str | None = None) -> None:  # noqa: ARG002
        await self.nc.jetstream().publish(channel, body)

    async def _read(self, subject: str, start_seq: int | None) -> list[RawMessage]:
        js = self.nc.jetstream()
        stream = await js.find_stream_name_by_subject(subject)
        info = await js.stream_info(stream)
        last = info.state.last_seq
        # no acks: an explicit-ack reader would stall at the server's max_ack_pending (1,000)
        config: dict[str, Any] = {"deliver_policy": "all", "ack_policy": "none"}
        if start_seq is not None:
            config = {**config, "deliver_policy": "by_start_sequence", "opt_start_seq": start_seq}
        from nats.js.api import ConsumerConfig

        sub = await js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(**config))
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
        js = self.nc.jetstream()
        info = await js.stream_info(await js.find_stream_name_by_subject(channel))
        return channel, info.state.last_seq + 1

    async def tapped(self, token: Any) -> list[RawMessage]:
        channel, start = token
        return await self._read(channel, start)

    async def dead_letters(self, channel: str) -> list[RawMessage]:
        try:
            return await self._read(channel + ".DLT", None)
        except Exception:  # noqa: BLE001 - no DLT stream yet means no dead letters
            return []


def raw_client(broker: str) -> RawClient:
    return {"kafka": KafkaRaw, "rabbit": RabbitRaw, "nats": NatsRaw}[broker]()
