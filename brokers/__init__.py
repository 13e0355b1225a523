"""Transports: the one place that knows a broker.

`create_transport(settings, …)` builds the transport registered under `settings.broker`
(entry-point group `switchboard.transports`, `brokers.registry`); everything else talks to
`Transport` and the names exported here. Writing a transport: `brokers.interface`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from brokers.credentials import redacted, with_credentials
from brokers.fitting import H_BODY_REF, H_BODY_SIZE
from brokers.interface import TransportContext
from brokers.metrics import DeliveryMetrics
from brokers.model import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    LINGER_BELOW,
    DeadLetter,
    NonRetryableError,
    Observability,
    Outgoing,
    RetryPolicy,
    Subscription,
)
from brokers.provisioning import Provisioning
from brokers.registry import load as load_transport
from brokers.transport import Transport

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from config import Settings

__all__ = [
    "EVENT_ID_HEADER",
    "EVENT_TYPE_HEADER",
    "H_BODY_REF",
    "H_BODY_SIZE",
    "LINGER_BELOW",
    "DeadLetter",
    "NonRetryableError",
    "Observability",
    "Outgoing",
    "Provisioning",
    "RetryPolicy",
    "Subscription",
    "Transport",
    "TransportContext",
    "broker_url",
    "create_transport",
    "provisioning",
    "redacted",
    "retry_policy",
]


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.retry_max_attempts,
        delay_ms=settings.retry_delay_ms,
        multiplier=settings.retry_backoff_multiplier,
    )


def provisioning(settings: Settings) -> Provisioning:
    return Provisioning(
        enabled=settings.provision,
        kafka_partitions=settings.kafka_partitions,
        kafka_replication_factor=settings.kafka_replication_factor,
        kafka_min_insync_replicas=settings.kafka_min_insync_replicas,
        nats_stream_replicas=settings.nats_stream_replicas,
    )


def create_transport(
    settings: Settings, registry: CollectorRegistry, app_name: str, tracer_provider: TracerProvider | None = None
) -> Transport:
    """Build the transport registered as `settings.broker` (validated by `Settings`)."""
    plugin = load_transport(settings.broker)
    context = TransportContext(
        url=broker_url(settings),
        policy=retry_policy(settings),
        metrics=DeliveryMetrics(registry, plugin.label),
        observability=Observability(registry, app_name, tracer_provider),
        namespace=settings.channel_namespace,
        provisioning=provisioning(settings),
        options={"kafka_sasl_mechanism": settings.kafka_sasl_mechanism},
    )
    return Transport(plugin, context)


def broker_url(settings: Settings) -> str:
    """BROKER_URL with BROKER_USERNAME / BROKER_PASSWORD in place of its own credentials (a secret:
    log `brokers.credentials.redacted` of it)."""
    password = settings.broker_password.get_secret_value() if settings.broker_password is not None else None
    return with_credentials(settings.resolved_broker_url, settings.broker_username, password)
