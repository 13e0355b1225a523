"""FastStream's Prometheus metrics for RabbitMQ, labelled by channel (its public provider hook)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aio_pika import IncomingMessage
from faststream.prometheus import ConsumeAttrs, PrometheusMiddleware
from faststream.rabbit.prometheus.provider import RabbitMetricsSettingsProvider
from faststream.rabbit.response import RabbitPublishCommand

from brokers.rabbit.batching import Batch

if TYPE_CHECKING:
    from faststream.message import StreamMessage
    from prometheus_client import CollectorRegistry


class ChannelLevelMetrics(RabbitMetricsSettingsProvider):
    """FastStream labels RabbitMQ metrics `<exchange>.<routing key>`; a producer that routes by
    orderId would make one series per order. Label by exchange (or, on the default exchange,
    by the queue the routing key names): as bounded as on Kafka and NATS. A `Batch` counts
    as its messages."""

    def get_consume_attrs_from_message(self, msg: StreamMessage[Any]) -> ConsumeAttrs:
        attrs = super().get_consume_attrs_from_message(msg)
        raw = msg.raw_message
        attrs["destination_name"] = raw.exchange or f"default.{raw.routing_key}"
        if isinstance(raw, Batch):
            attrs["messages_count"] = len(raw)
            attrs["message_size"] = sum(len(m.body) for m in raw)
        return attrs

    def get_publish_destination_name_from_cmd(self, cmd: RabbitPublishCommand) -> str:
        return cmd.exchange.name or f"default.{cmd.destination}"


class RabbitMetricsMiddleware(PrometheusMiddleware[IncomingMessage, RabbitPublishCommand]):
    """FastStream's Prometheus middleware for RabbitMQ with `ChannelLevelMetrics` labels."""

    def __init__(self, *, registry: CollectorRegistry, app_name: str) -> None:
        super().__init__(
            settings_provider_factory=lambda _: ChannelLevelMetrics(), registry=registry, app_name=app_name
        )
