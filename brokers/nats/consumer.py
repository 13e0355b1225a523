"""Subscriptions on durable pull consumers and the native failure moves.

Each consumer is a durable pull consumer named after it, with explicit acks and `max_deliver` =
attempts + 1 (the spare delivery lets a process that crashed on the last attempt still dead-letter
the message). A batch is what the stream holds when the consumer asks (`pull.PromptBatches`);
each message is acked after the batch's store transaction committed, a batch that fails as a
whole is nak'ed. Retry → `nak(delay)`: the server redelivers after the delay; the attempt number
is the server's own delivery count. Dead letter → `<channel>.DLT` (`bodies`), then ack the source.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, DeliverPolicy, NatsRouter, PullSub

from brokers.engine.faststream import decode_untouched, handler_endpoint, policy_middleware, stop_subscribers
from brokers.model import BATCH_MAX, Delivery
from brokers.nats.pull import ACK_WAIT_S, IDLE_FETCH_S, PromptBatches
from brokers.nats.wire import delivery_count, release

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream.message import StreamMessage

    from brokers.interface import Pipeline
    from brokers.model import Subscription
    from brokers.nats.bodies import DeadLetterWriter
    from brokers.nats.channels import NatsChannels
    from brokers.nats.connection import NatsConnection


async def deliveries(msg: StreamMessage[Any]) -> list[Delivery]:
    return [Delivery(m.data, dict(m.headers or {}), delivery_count(m), m) for m in msg.raw_message]


async def give_back(msg: StreamMessage[Any]) -> None:
    await release(msg.raw_message)


class NatsConsumer:
    """`brokers.interface.Consumer` for JetStream."""

    def __init__(self, conn: NatsConnection, channels: NatsChannels, writer: DeadLetterWriter) -> None:
        self._conn = conn
        self._channels = channels
        self._writer = writer
        self.batches: list[PromptBatches] = []

    def subscribe(self, sub: Subscription, pipeline: Pipeline) -> None:
        conn = self._conn
        conn.subscriptions.append(sub)
        max_deliver = conn.context.policy.max_attempts + 1
        router = NatsRouter(middlewares=[policy_middleware(pipeline, deliveries, give_back)])
        subscriber = router.subscriber(
            sub.channel,
            stream=conn.stream(sub.channel),
            durable=sub.consumer,
            pull_sub=PullSub(batch_size=BATCH_MAX, timeout=IDLE_FETCH_S, batch=True),
            config=ConsumerConfig(max_deliver=max_deliver, ack_wait=ACK_WAIT_S),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.MANUAL,
            decoder=decode_untouched,
            title=f"{sub.channel}:{sub.consumer}",
            description=sub.description,
        )
        subscriber(handler_endpoint(sub))
        self.batches.append(PromptBatches(conn, subscriber, sub.channel, sub.consumer, max_deliver))
        conn.broker.include_router(router)
        self._channels.declare(
            sub.dead_letter_channel,
            sub.model,
            f"Dead letters of {sub.channel}: original bytes plus x-* envelope headers.",
        )

    def start(self) -> None:
        """Start the pull loops (each reads once FastStream started its subscriber)."""
        for batches in self.batches:
            batches.start()

    async def schedule_retry(self, sub: Subscription, delivery: Delivery, attempt: int, delay_ms: int) -> None:  # noqa: ARG002
        await delivery.native.nak(delay=delay_ms / 1000)
        delivery.settled = True

    async def dead_letter(self, sub: Subscription, delivery: Delivery, headers: dict[str, str]) -> None:
        await self._writer.publish(sub, delivery.body, {**delivery.headers, **headers})

    async def settle(self, sub: Subscription, done: list[Delivery], redeliver: list[Delivery]) -> None:  # noqa: ARG002
        """Ack each settled message; nak the others for an immediate redelivery. (Acks are
        fire-and-forget publishes: a lost one means a redelivery, which handlers absorb.)"""
        for delivery in done:
            await delivery.native.ack()
        for delivery in redeliver:
            await delivery.native.nak()

    async def drain(self, settled: Callable[[], Awaitable[None]]) -> None:
        """Stop reading, wait for settlement, then release what the server already sent but no
        batch took (the tail of a fill lands in the queue after the fill returned). Flushing twice
        lets everything the server sent before the PONG arrive (and our naks and acks leave)."""
        self._conn.draining = True
        stop_subscribers(self._conn.broker)
        await settled()
        for _ in range(2):
            for batches in self.batches:
                await batches.release_queued()
            with contextlib.suppress(Exception):  # acks are buffered publishes: send them before the close
                await self._conn.nc.flush()
