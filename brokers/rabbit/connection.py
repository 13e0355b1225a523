"""The state the RabbitMQ roles share: the FastStream broker, its aio-pika connection and the
objects the service declared so far (for provisioning and AsyncAPI)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from faststream.rabbit import RabbitBroker
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware
from faststream.rabbit.schemas import Channel

from brokers.engine.faststream import broker_options
from brokers.model import BATCH_MAX
from brokers.nodes import rabbit_node_urls
from brokers.rabbit.failover import NodeFailover
from brokers.rabbit.metrics import RabbitMetricsMiddleware

if TYPE_CHECKING:
    from aio_pika.abc import AbstractRobustConnection
    from faststream.rabbit import RabbitQueue

    from brokers.interface import TransportContext

RECONNECT_INTERVAL_S = 1.0
"""Pause between reconnection attempts after a lost connection (aio-pika's default is 5 s)."""
PREFETCH = 2 * BATCH_MAX
"""Unacknowledged deliveries per subscription: two batches' worth, so the broker keeps
delivering the next batch while one is handled and acknowledged (with one batch's worth the
consumer waited a round trip, idle, after each multiple-ack)."""


def build_broker(context: TransportContext) -> RabbitBroker:
    failover = NodeFailover(rabbit_node_urls(context.url))
    return RabbitBroker(
        failover.initial(),
        on_close=[failover.on_close],
        reconnect_interval=RECONNECT_INTERVAL_S,
        default_channel=Channel(prefetch_count=PREFETCH),
        **broker_options(context.observability, RabbitMetricsMiddleware, RabbitTelemetryMiddleware),
    )


class RabbitConnection:
    """What every role of the transport works with."""

    def __init__(self, broker: RabbitBroker) -> None:
        self.broker = broker
        self.connection: AbstractRobustConnection | None = None
        """FastStream's aio-pika connection, once `connect` ran (`RabbitBroker.connect` returns it)."""
        self.declared_publishers: set[str] = set()
        self.queues_to_declare: dict[str, RabbitQueue] = {}
        """Queues no FastStream subscriber declares (the delay queues), by name."""
        self.dead_letter_channels: set[str] = set()
        """Channels whose DLT queue is provisioned (subscribed to, or listened to)."""

    async def connect(self) -> AbstractRobustConnection:
        """Connect the broker (if it is not yet: a service app or a tool may have) and keep its connection."""
        self.connection = await self.broker.connect()
        return self.connection

    def open_connection(self) -> AbstractRobustConnection | None:
        """The broker's connection, None before `connect` or once it closed (never connects: lag is
        asked after stopping too)."""
        connection = self.connection
        return None if connection is None or connection.is_closed else connection

    @property
    def frame_max(self) -> int:
        """The frame size the connection negotiated, 0 while unknown."""
        transport = self.connection.transport if self.connection is not None else None
        tune = getattr(transport.connection, "connection_tune", None) if transport is not None else None
        return int(getattr(tune, "frame_max", 0) or 0)
