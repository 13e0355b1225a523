"""RabbitMQ transport: dead-letter exchanges and TTL delay queues.

Native mapping of the shared policy: channel → durable fanout exchange, each consumer's durable
quorum queue bound to it, persistent messages published with confirms (`publisher`); batches,
multiple-acks, retries through delay queues and dead letters (`consumer`, `dead_letters`);
provisioning of every queue and exchange (`channels`, `provision`); node failover (`failover`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from brokers.interface import TransportParts
from brokers.rabbit.channels import RabbitChannels
from brokers.rabbit.connection import RabbitConnection, build_broker
from brokers.rabbit.consumer import RabbitConsumer
from brokers.rabbit.dead_letters import RabbitDeadLetters
from brokers.rabbit.lag import RabbitLag
from brokers.rabbit.lifecycle import RabbitLifecycle
from brokers.rabbit.publisher import RabbitPublisher

if TYPE_CHECKING:
    from brokers.interface import Engine, TransportContext

label = "rabbitmq"
default_url = "amqp://guest:guest@localhost:5672/"
capabilities: frozenset[str] = frozenset({"survives-process-restart"})
"""Not `reads-from-beginning`: a consumer's queue keeps only what arrives once it exists."""


def build(context: TransportContext, engine: Engine) -> TransportParts:
    state = RabbitConnection(build_broker(context))
    channels = RabbitChannels(state)
    return TransportParts(
        broker=state.broker,
        lifecycle=RabbitLifecycle(state, channels, context.provisioning),
        channels=channels,
        publisher=RabbitPublisher(state),
        consumer=RabbitConsumer(state, engine, context.policy),
        lag=RabbitLag(state),
        dead_letters=RabbitDeadLetters(state),
    )
