"""The one pydantic-settings `Settings` of every service.

Every name here is an environment variable (case-insensitive). Defaults point at
localhost so a fresh checkout runs without configuration.
"""

from __future__ import annotations

import re
from functools import cached_property, lru_cache

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from brokers import registry

DEFAULT_HTTP_PORTS: dict[str, int] = {
    "order": 8080,
    "inventory": 8081,
    "payment": 8082,
    "notification": 8083,
}


class Settings(BaseSettings):
    """Runtime configuration shared by all services."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    broker: str = "kafka"
    broker_url: str | None = None
    broker_username: str | None = Field(
        None, description="Broker user; replaces the user name in BROKER_URL (brokers.credentials)."
    )
    broker_password: SecretStr | None = Field(
        None, description="Broker password; replaces the one in BROKER_URL and stays out of the process list."
    )
    kafka_sasl_mechanism: str = Field(
        "SCRAM-SHA-512", description="SASL mechanism of a Kafka BROKER_URL with credentials: SCRAM-SHA-512|-256, PLAIN."
    )
    database_url: str | None = None
    data_dir: str = "./data"

    retry_max_attempts: int = Field(3, ge=1)
    retry_delay_ms: int = Field(2000, ge=0)
    retry_backoff_multiplier: float = Field(1.0, ge=1.0)

    admin_token: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int | None = None

    channel_namespace: str = Field(
        "",
        description="Prefix for every channel name (`<ns>.order-events`); empty in "
        "production, set by tests so runs never see each other's messages.",
    )
    fail_product_ids: str = Field(
        "FAIL", description="Comma-separated productIds whose orders make the inventory handler raise."
    )
    payment_decline_user_prefix: str = Field(
        "declined", description="Payments of users whose userId starts with this are declined."
    )
    consumer_names: str = Field(
        "",
        description="Comma-separated `service=name` pairs naming a service's consumer (Kafka group id, owner of its "
        "RabbitMQ queues, NATS durable), e.g. `inventory=inventory-group`; a service without one is "
        "`<service>-service`. Every process must get the same value (publishers report their consumers' lag).",
    )
    order_events_flat_fields: bool = Field(
        False,
        description="The order service's OrderCreated with exactly one item also carries top-level `productId` and "
        "`quantity` (copies of the item), which a consumer of the seed's flat OrderEvent reads.",
    )
    log_level: str = "INFO"
    otel_exporter_otlp_endpoint: str | None = None

    # outbox
    outbox_stall_timeout_s: float = Field(
        30.0,
        gt=0,
        description="/ready answers 503 once this process's outbox relay has been unable to publish "
        "for longer than this (seconds).",
    )

    # provisioning
    provision: bool = Field(
        True,
        description="Create the topics, streams and queues a service uses at startup (and compare existing ones, "
        "logging differences without altering them). False: the service declares nothing beyond what the broker "
        "does itself and assumes an operator provisioned (`python -m brokers.provision`).",
    )
    kafka_partitions: int = Field(
        3,
        ge=1,
        description="Partitions of each Kafka topic created: at most this many replicas of a service share a "
        "topic's work. More cost a single consumer throughput (6 partitions: -25 % consumer path in the bench).",
    )
    kafka_replication_factor: int | None = Field(
        None, ge=1, description="Replication factor of each Kafka topic created; unset: min(3, brokers in the cluster)."
    )
    kafka_min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="`min.insync.replicas` of each Kafka topic created; unset: replication factor − 1 when it is "
        "at least 2, else not set (the broker's default).",
    )
    nats_stream_replicas: int | None = Field(
        None,
        ge=1,
        le=5,
        description="Replicas of each JetStream stream created; unset: min(3, servers in the cluster).",
    )

    @field_validator("broker")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        """Any transport registered under the entry-point group `switchboard.transports`."""
        return registry.check_name(value.strip().lower())

    @field_validator("consumer_names")
    @classmethod
    def _valid_consumer_names(cls, value: str) -> str:
        parse_consumer_names(value)
        return value

    @cached_property
    def _consumer_names(self) -> dict[str, str]:
        return parse_consumer_names(self.consumer_names)

    def consumer_name(self, service: str) -> str:
        """The consumer name of `service` (`order`, `inventory`, …): CONSUMER_NAMES, else `<service>-service`."""
        return self._consumer_names.get(service) or f"{service}-service"

    @property
    def resolved_broker_url(self) -> str:
        """BROKER_URL, else the transport's default (`TransportPlugin.default_url`)."""
        return self.broker_url or registry.load(self.broker).default_url

    def port_for(self, service: str) -> int:
        return self.http_port or DEFAULT_HTTP_PORTS[service]

    def database_url_for(self, service: str) -> str:
        return self.database_url or f"sqlite:///{self.data_dir}/{service}.db"

    def channel(self, name: str) -> str:
        """The broker-level name of a contract channel, namespaced when configured."""
        return f"{self.channel_namespace}.{name}" if self.channel_namespace else name

    @cached_property
    def failing_products(self) -> frozenset[str]:
        """FAIL_PRODUCT_IDS as a set (asked for every order the inventory handles)."""
        return frozenset(p.strip() for p in self.fail_product_ids.split(",") if p.strip())


CONSUMER_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,100}")
"""Valid as a Kafka group id and topic-name part, a RabbitMQ queue-name part and a NATS durable name."""


def parse_consumer_names(value: str) -> dict[str, str]:
    """CONSUMER_NAMES (`service=name,…`) as a dict; ValueError naming the first bad entry."""
    names: dict[str, str] = {}
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        service, sep, name = (s.strip() for s in entry.partition("="))
        if not sep:
            raise ValueError(f"{entry!r} is not service=name")
        if service not in DEFAULT_HTTP_PORTS:
            raise ValueError(f"{entry!r}: unknown service {service!r}; services are: {', '.join(DEFAULT_HTTP_PORTS)}")
        if service in names:
            raise ValueError(f"{entry!r}: {service} is named twice")
        if not CONSUMER_NAME_PATTERN.fullmatch(name):
            raise ValueError(f"{entry!r}: a consumer name is 1-100 letters, digits, '_' or '-'")
        names[service] = name
    taken: dict[str, str] = {}
    for service in DEFAULT_HTTP_PORTS:
        name = names.get(service) or f"{service}-service"
        if name in taken:
            raise ValueError(f"{service} and {taken[name]} would share the consumer name {name!r}")
        taken[name] = service
    return names


@lru_cache
def get_settings() -> Settings:
    """The process's settings; a bad environment stops it with one line naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise SystemExit(f"switchboard: invalid configuration: {problems}") from None
