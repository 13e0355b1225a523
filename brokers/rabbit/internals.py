"""The one use of a FastStream internal the RabbitMQ transport needs (pinned by
tests/unit/test_rabbit_internals.py).

FastStream 0.7 has no RabbitMQ batch consumer, and its subscribers are built only by
`faststream.rabbit.subscriber.factory.create_subscriber`, with the class hard-coded: a subclass
instance could only be built from `faststream._internal` parts. aio-pika's own extension point
(`CHANNEL_CLASS` / `QUEUE_CLASS`) is out of reach too: `RabbitBroker` opens its connection with
fixed arguments."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika import IncomingMessage
from faststream.rabbit.subscriber import RabbitSubscriber


def divert_deliveries(
    subscriber: RabbitSubscriber, intake: Callable[[IncomingMessage], None]
) -> Callable[[Any], Awaitable[Any]]:
    """Send what aio-pika delivers to `subscriber` (FastStream's `RabbitSubscriber.start` consumes
    with `self.consume`) to `intake` instead; returns FastStream's own `consume` of it, through
    which `intake` passes each batch. Swaps the subscriber's class (slotted: no attribute can be
    added) for a subclass that only overrides `consume`. Call before the broker starts."""
    consume = subscriber.consume

    class DivertingSubscriber(RabbitSubscriber):
        __slots__ = ()

        async def consume(self, msg: Any) -> Any:
            intake(msg)
            return None

    subscriber.__class__ = DivertingSubscriber
    return consume
