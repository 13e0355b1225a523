"""Per-service broker grants of the secured profile (`scripts/brokers.sh start <broker> --auth`).

Each service's broker user may publish only the channels it owns and read only those it
consumes, plus what the transport needs for them: its retry plumbing and the `.DLT` of each
consumed channel (the consumer that gives up writes the dead letter), its consumer group /
queues / durables (named after its consumer name), the dead-letter listeners (notification),
the lag of the consumers of what it publishes, and the objects it provisions. `admin` (tools,
provisioning, Kafka super user) gets everything. What a service uses is read from the code
(`ServiceChannels.of`, from the service modules), never listed here by hand.

Grants are rendered for a set of channel namespaces (CHANNEL_NAMESPACE; the empty one always):
Kafka LITERAL and PREFIXED ACLs, RabbitMQ configure/write/read regexes on one vhost, NATS
per-user publish/subscribe allow lists. NATS stream tokens cannot be wildcarded in part, so
every namespace is named, on every broker alike.

    python -m brokers.permissions show  [--namespace NS ...]          # the grants, per broker
    python -m brokers.permissions nats-conf   --credentials FILE [--namespace NS ...]
    python -m brokers.permissions rabbit-definitions --credentials FILE [--vhost V] [--namespace NS ...]
    python -m brokers.permissions kafka-apply [--namespace NS ...] [--revoke]  # as admin: BROKER_URL / BROKER_*

Each broker's grants are rendered by its package (`brokers.kafka.permissions`,
`brokers.rabbit.permissions`, `brokers.nats.permissions`); the command line is `__main__`.
FILE is `.local/auth/credentials.env` (`BROKER_PASSWORD_<USER>=…` lines).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ADMIN = "admin"
SERVICES = ("order", "inventory", "payment", "notification")
DLT = ".DLT"
PROVISION_OPS = ("CREATE", "DESCRIBE", "DESCRIBE_CONFIGS")
"""What a service needs on each topic it uses to provision it (create, describe, compare)."""


@dataclass(frozen=True)
class ServiceChannels:
    """What one service uses, in contract channel names (the namespace is added per grant)."""

    user: str
    """its broker user: the service name"""
    consumer: str
    """its consumer name (Kafka group, RabbitMQ queue owner, NATS durable)"""
    publishes: tuple[str, ...]
    consumes: tuple[str, ...]
    dead_letters: tuple[str, ...] = ()
    """channels whose dead letters it listens to"""
    watched: tuple[tuple[str, str], ...] = ()
    """(channel, consumer name) whose lag it reads: the consumers of what it publishes"""

    @classmethod
    def of(cls, service: Any) -> ServiceChannels:
        """Read from a `services.runtime.Service` (its subscriptions, publishers, dead-letter
        listeners and lag watch)."""
        prefix = service.settings.channel("")

        def contract(name: str) -> str:
            return name.removeprefix(prefix) if prefix else name

        return cls(
            user=service.name,
            consumer=service.consumer,
            publishes=tuple(dict.fromkeys(service.published)),
            consumes=tuple(dict.fromkeys(contract(s.channel) for s in service.transport.subscriptions)),
            dead_letters=tuple(dict.fromkeys(service.dead_letters_heard)),
            watched=tuple(
                dict.fromkeys(
                    (contract(c), consumer)
                    for c, consumer in service.transport.lag_watch
                    if consumer != service.consumer
                )
            ),
        )


def prefixes(namespaces: Iterable[str]) -> list[str]:
    """Channel-name prefixes of `namespaces`, the empty namespace always first."""
    out = [""]
    for ns in namespaces:
        ns = ns.strip()
        if ns and f"{ns}." not in out:
            out.append(f"{ns}.")
    return out


def discover() -> list[ServiceChannels]:
    """What the four service modules use, as the configured settings build them (CONSUMER_NAMES
    included): each module's `service` is built on first access; nothing connects."""
    return [ServiceChannels.of(importlib.import_module(f"services.{name}").service) for name in SERVICES]


def read_passwords(path: Path) -> dict[str, str]:
    """`BROKER_PASSWORD_<USER>=…` lines of the credentials file, by lower-case user."""
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("BROKER_PASSWORD_"):
            out[key.removeprefix("BROKER_PASSWORD_").lower()] = value.strip().strip("'\"")
    return out
