"""Transports: the one place where the broker is chosen.

`create_transport(settings, …)` is the only code that looks at `settings.broker`;
everything else talks to the `Transport` interface in `brokers.base`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from brokers.base import Observability, RetryPolicy, Subscription, Transport
from brokers.credentials import with_credentials
from brokers.metrics import DeliveryMetrics
from brokers.provisioning import Provisioning

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from config import Settings

__all__ = [
    "Provisioning",
    "RetryPolicy",
    "Subscription",
    "Transport",
    "broker_url",
    "create_transport",
    "provisioning",
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
) -> Transport[Any]:
    """Build the transport named by `settings.broker` (validated: kafka | rabbit | nats)."""
    transport_cls: type[Transport[Any]]
    if settings.broker == "kafka":
        from brokers.kafka import KafkaTransport as transport_cls
    elif settings.broker == "rabbit":
        from brokers.rabbit import RabbitTransport as transport_cls
    elif settings.broker == "nats":
        from brokers.nats import NatsTransport as transport_cls
    else:  # Settings validates BROKER; this guards direct construction
        raise ValueError(f"BROKER={settings.broker!r} is not supported; valid values are: kafka, rabbit, nats")
    metrics = DeliveryMetrics(registry, transport_cls.label)
    observability = Observability(registry, app_name, tracer_provider)
    extra: dict[str, Any] = {"sasl_mechanism": settings.kafka_sasl_mechanism} if settings.broker == "kafka" else {}
    return transport_cls(
        broker_url(settings),
        retry_policy(settings),
        metrics,
        observability,
        settings.channel_namespace,
        provisioning=provisioning(settings),
        **extra,
    )


def broker_url(settings: Settings) -> str:
    """BROKER_URL with BROKER_USERNAME / BROKER_PASSWORD in place of its own credentials (a secret:
    log `brokers.credentials.redacted` of it)."""
    password = settings.broker_password.get_secret_value() if settings.broker_password is not None else None
    return with_credentials(settings.resolved_broker_url, settings.broker_username, password)
