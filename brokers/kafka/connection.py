"""What every Kafka part shares: the cluster's address and security, the FastStream broker, our
own clients, the declared publishers, group ids and the group watch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from brokers.credentials import kafka_sasl_options
from brokers.engine.faststream import broker_options
from brokers.kafka.clients import PRODUCER_BATCH_BYTES, AdminClients, Sender
from brokers.kafka.groups import GroupWatch, process_client_id
from brokers.nodes import kafka_bootstrap_servers

if TYPE_CHECKING:
    from faststream.kafka.publisher.usecase import DefaultPublisher

    from brokers.interface import TransportContext

DEFAULT_SASL_MECHANISM = "SCRAM-SHA-512"
HEARTBEAT_INTERVAL_MS = 500
"""A service's subscribers share its group id (docs/contract.md) but read different topics, so each
one that joins rebalances the group, and the members learn of it only at their next heartbeat:
at aiokafka's default (3 s) the notification service needed 15 s to start."""
SESSION_TIMEOUT_MS = 6000
"""How long the group waits for a member that vanished (killed, or stopped in the middle of
joining) before its partitions move: the broker's minimum, not aiokafka's 10 s default."""
ASSIGNORS = (RoundRobinPartitionAssignor, RangePartitionAssignor)
"""Offered in this order: a group of our consumers alone uses round robin; the Java client offers
range (and cooperative-sticky) by default, so a group shared with Java consumers agrees on range
(offering only round robin, our consumers got InconsistentGroupProtocol and stopped consuming)."""
GROUP_OPTIONS: dict[str, Any] = {
    "auto_offset_reset": "earliest",
    "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
    "session_timeout_ms": SESSION_TIMEOUT_MS,
    "partition_assignment_strategy": ASSIGNORS,
}
"""Subscriber options of every consumer group member of ours."""


class KafkaConnection:
    """The shared state of one Kafka transport's parts; nothing connects before it is used."""

    def __init__(self, context: TransportContext) -> None:
        self.context = context
        self.bootstrap_servers = kafka_bootstrap_servers(context.url)
        """BROKER_URL's node list (`brokers.nodes`)."""
        mechanism = context.options.get("kafka_sasl_mechanism", DEFAULT_SASL_MECHANISM)
        self.security = kafka_sasl_options(context.url, mechanism)
        """SASL options of every client when BROKER_URL carries credentials (`brokers.credentials`)."""
        self.broker = KafkaBroker(
            self.bootstrap_servers,
            client_id=process_client_id(),
            acks="all",
            enable_idempotence=True,
            max_batch_size=PRODUCER_BATCH_BYTES,
            security=faststream_security(self.security),
            **broker_options(context.observability, KafkaPrometheusMiddleware, KafkaTelemetryMiddleware),
        )
        self.sender = Sender(self.bootstrap_servers, self.security)
        self.admin_clients = AdminClients(self.bootstrap_servers, self.security)
        self.group_watch = GroupWatch(
            process_client_id(),
            self.admin_clients.admin,
            context.metrics.join_failed,
            grace_s=2 * SESSION_TIMEOUT_MS / 1000,
        )
        self.publishers: dict[str, DefaultPublisher] = {}

    def group(self, consumer: str) -> str:
        """The consumer's group id: its contract name, namespaced when channels are."""
        namespace = self.context.namespace
        return f"{namespace}.{consumer}" if namespace else consumer

    def declare_publisher(self, topic: str, schema: Any, description: str) -> None:
        """Make `topic` known to AsyncAPI and provisioning (once)."""
        if topic not in self.publishers:
            self.publishers[topic] = self.broker.publisher(topic, title=topic, description=description, schema=schema)


def faststream_security(options: dict[str, str]) -> BaseSecurity | None:
    """FastStream's form of `kafka_sasl_options` (None: PLAINTEXT)."""
    if not options:
        return None
    kinds: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
        "PLAIN": SASLPlaintext,
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
    }
    return kinds[options["sasl_mechanism"]](options["sasl_plain_username"], options["sasl_plain_password"])
