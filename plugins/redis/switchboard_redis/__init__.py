"""Redis Streams transport for Switchboard (entry point `switchboard.transports:redis`).

Mapping (see README.md): channel → stream of that name; consumer name → consumer group;
retries → sorted set + per-consumer retry stream; dead letters → stream `<channel>.DLT`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from faststream.redis import RedisBroker
from faststream.redis.opentelemetry import RedisTelemetryMiddleware
from faststream.redis.prometheus import RedisPrometheusMiddleware

from brokers.engine.faststream import broker_options
from brokers.interface import TransportParts
from brokers.model import dead_letter_channel
from switchboard_redis.channels import RedisChannels, dead_letter_description
from switchboard_redis.connection import RedisConnection
from switchboard_redis.consumer import RedisConsumer
from switchboard_redis.dead_letters import RedisDeadLetters
from switchboard_redis.lag import RedisLag
from switchboard_redis.lifecycle import RedisLifecycle
from switchboard_redis.publisher import RedisPublisher
from switchboard_redis.received import ReceivedMetrics

if TYPE_CHECKING:
    from brokers.interface import Engine, TransportContext
    from brokers.model import Subscription

label = "redis"
default_url = "redis://localhost:6379"


class _DocumentedConsumer(RedisConsumer):
    """The consumer, documenting each subscription's channel and DLT in AsyncAPI."""

    channels: RedisChannels

    def subscribe(self, sub: Subscription, pipeline: object) -> None:  # type: ignore[override]
        super().subscribe(sub, pipeline)  # type: ignore[arg-type]
        self.channels.document(sub.channel, sub.model, sub.description or f"Consumed by {sub.consumer}.")
        self.channels.document(sub.dead_letter_channel, sub.model, dead_letter_description(sub.channel))


def build(context: TransportContext, engine: Engine) -> TransportParts:
    """The parts of a Redis Streams transport; nothing connects yet."""
    broker = RedisBroker(
        context.url,
        **broker_options(context.observability, RedisPrometheusMiddleware, RedisTelemetryMiddleware),
    )
    connection = RedisConnection(context.url)
    received = ReceivedMetrics(label, context.observability)
    consumer = _DocumentedConsumer(connection, engine, received, context.metrics)
    dead_letters = RedisDeadLetters(connection, engine, consumer.member)
    channels = RedisChannels(connection, broker, consumer, dead_letters)
    consumer.channels = channels
    dead_letters.on_listen = lambda channel, consumer_name: channels.document(
        dead_letter_channel(channel), None, f"{consumer_name} reports every dead letter of {channel}."
    )
    return TransportParts(
        broker=broker,
        lifecycle=RedisLifecycle(context, connection, broker, channels, consumer, dead_letters),
        channels=channels,
        publisher=RedisPublisher(connection, label, context.observability),
        consumer=consumer,
        lag=RedisLag(connection, consumer),
        dead_letters=dead_letters,
    )
