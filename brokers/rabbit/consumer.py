"""Subscriptions and the native moves of the failure policy (`brokers.interface.Consumer`).

Each consumer owns the durable quorum queue `<channel>.<consumer>` bound to the channel's
fanout exchange (whatever routing key a foreign publisher uses, every message reaches it).
Up to PREFETCH unacked messages are delivered at once; those that arrive while a batch runs
form the next batch (`brokers.rabbit.batching`). A batch is acknowledged with one multiple-ack
(each subscription consumes on an AMQP channel of its own); a batch that fails as a whole is
nacked with requeue.

A retry is re-published, with our own `x-attempts` header, to the consumer's delay queue
`<queue>.retry-<delay>ms`, whose TTL expires it back into the consumer queue only, after the
delay, without blocking the queue (one delay queue per distinct delay, so expiry is never
stuck behind a longer one; `x-death` is not used for counting: its semantics changed in
3.13/4.0). A dead letter goes to the fanout exchange `<channel>.DLT`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from faststream import AckPolicy
from faststream.rabbit import RabbitRouter
from faststream.rabbit.schemas import Channel

from brokers.engine.faststream import (
    decode_untouched,
    handler_endpoint,
    keep_unacknowledged,
    policy_middleware,
    stop_subscribers,
)
from brokers.model import ATTEMPTS_HEADER, Delivery, attempt_header
from brokers.rabbit.batching import Intake, parse_batch
from brokers.rabbit.connection import PREFETCH
from brokers.rabbit.copies import Copy, carried, fitted
from brokers.rabbit.internals import divert_deliveries
from brokers.rabbit.names import consumer_queue, dead_letter_exchange, delay_queue, exchange_of

if TYPE_CHECKING:
    from faststream.message import StreamMessage

    from brokers.interface import Engine, Pipeline
    from brokers.model import RetryPolicy, Subscription
    from brokers.rabbit.connection import RabbitConnection


class RabbitConsumer:
    """FastStream subscribers whose batches go to the engine; retries, dead letters and acks."""

    def __init__(self, state: RabbitConnection, engine: Engine, policy: RetryPolicy) -> None:
        self._state = state
        self._engine = engine
        self._policy = policy

    def subscribe(self, sub: Subscription, pipeline: Pipeline) -> None:
        state = self._state
        router = RabbitRouter(middlewares=[policy_middleware(pipeline, _deliveries, keep_unacknowledged)])
        subscriber = router.subscriber(
            consumer_queue(sub),
            exchange_of(sub.channel),
            # a channel of its own (FastStream keys channels by instance): its delivery tags are
            # this subscription's alone, so `settle` may acknowledge a batch with one multiple-ack
            channel=Channel(prefetch_count=PREFETCH),
            ack_policy=AckPolicy.MANUAL,
            parser=parse_batch,
            decoder=decode_untouched,
            title=f"{sub.channel}:{sub.consumer}",
            description=sub.description,
        )
        subscriber(handler_endpoint(sub))
        intake = Intake()
        intake.bind(divert_deliveries(subscriber, intake.add))
        state.broker.include_router(router)
        for delay_ms in self._policy.retry_delays_ms():
            q = delay_queue(sub, delay_ms)
            state.queues_to_declare[q.name] = q
        state.dead_letter_channels.add(sub.channel)
        dlt = dead_letter_exchange(sub.channel)
        if dlt.name not in state.declared_publishers:
            state.declared_publishers.add(dlt.name)
            state.broker.publisher(
                exchange=dlt,
                title=dlt.name,
                description=f"Dead letters of {sub.channel}: original bytes plus x-* envelope headers.",
                schema=sub.model,
                persist=True,
            )

    async def schedule_retry(self, sub: Subscription, delivery: Delivery, attempt: int, delay_ms: int) -> None:
        headers = self.fitted({**carried(delivery.headers), ATTEMPTS_HEADER: str(attempt)}, {ATTEMPTS_HEADER})
        await self._engine.publish_one(Copy.of(delivery, delay_queue(sub, delay_ms).name, headers, to_queue=True))

    async def dead_letter(self, sub: Subscription, delivery: Delivery, headers: dict[str, str]) -> None:
        envelope = self.fitted({**carried(delivery.headers), **headers}, set(headers))
        await self._engine.publish_one(Copy.of(delivery, dead_letter_exchange(sub.channel).name, envelope))

    def fitted(self, headers: dict[str, Any], ours: set[str]) -> dict[str, Any]:
        """`headers` of a copy made to fit the connection's content header frame (`copies.fitted`)."""
        return fitted(headers, ours, self._state.frame_max)

    async def settle(self, sub: Subscription, done: list[Delivery], redeliver: list[Delivery]) -> None:  # noqa: ARG002
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

    async def drain(self, settled: Callable[[], Awaitable[None]]) -> None:
        """Stop the subscribers (what is delivered meanwhile stays unacknowledged and is requeued
        when the channel closes), then wait until the running batches are acknowledged."""
        stop_subscribers(self._state.broker)
        await settled()


async def _deliveries(msg: StreamMessage[Any]) -> list[Delivery]:
    return [Delivery(m.body, m.headers or {}, attempt_header(m.headers or {}), m) for m in msg.raw_message]
