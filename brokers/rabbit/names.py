"""The RabbitMQ objects a channel, a subscription and its failure policy map to."""

from __future__ import annotations

from typing import TYPE_CHECKING

from faststream.rabbit import ExchangeType, QueueType, RabbitExchange, RabbitQueue

from brokers.model import dead_letter_channel

if TYPE_CHECKING:
    from brokers.model import Subscription

CRASH_LOOP_DELIVERY_LIMIT = 10


def exchange_of(channel: str) -> RabbitExchange:
    return RabbitExchange(channel, type=ExchangeType.FANOUT, durable=True)


def consumer_queue_name(sub: Subscription) -> str:
    return f"{sub.channel}.{sub.consumer}"  # also assumed by consumer_lag


def consumer_queue(sub: Subscription) -> RabbitQueue:
    """The consumer's quorum queue; `x-delivery-limit` dead-letters a crash loop that never reaches our code."""
    return RabbitQueue(
        consumer_queue_name(sub),
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments={
            "x-delivery-limit": CRASH_LOOP_DELIVERY_LIMIT,
            "x-dead-letter-exchange": dead_letter_exchange(sub.channel).name,
        },
    )


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


def listener_queue(channel: str, consumer: str) -> RabbitQueue:
    """A dead-letter listener's own queue on the dead-letter exchange: listening takes nothing off the DLT."""
    return RabbitQueue(f"{dead_letter_channel(channel)}.{consumer}", queue_type=QueueType.QUORUM, durable=True)
