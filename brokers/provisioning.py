"""Provisioning: the broker objects a service uses, created explicitly and idempotently.

Each transport's `provision()` creates what is missing with the wanted settings and
compares what exists with them; a difference is reported (MISMATCH: a warning in the
service log, a line of `python -m brokers.provision`) and never altered. It runs in
`start_extras()` (before the subscribers and the outbox relay start) unless PROVISION is
off, and for operators in `python -m brokers.provision`. Per broker: `brokers.kafka.provision`
(topics), `brokers.nats.provision` (streams), `brokers.rabbit.provision` (queues, exchanges).

No broker client is imported here: the settings, the arithmetic and the report lines only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_REPLICAS = 3
"""Replicas wanted by default, when the cluster has that many nodes: one node may fail (and,
with Kafka's min.insync.replicas = RF − 1, still accept writes) without losing anything."""

CREATED = "created"
EXISTS = "exists"
MISMATCH = "MISMATCH"
WOULD_CREATE = "would create"
FAILED = "FAILED"


@dataclass(frozen=True)
class Provisioning:
    """How a transport provisions the objects it uses (config: PROVISION, KAFKA_PARTITIONS,
    KAFKA_REPLICATION_FACTOR, KAFKA_MIN_INSYNC_REPLICAS, NATS_STREAM_REPLICAS). None: derived
    from the cluster (`kafka_replication_factor`, `kafka_min_insync_replicas`, `nats_replicas`)."""

    enabled: bool = True
    """False: the service declares nothing and assumes an operator provisioned (see each transport)."""
    kafka_partitions: int = 3
    kafka_replication_factor: int | None = None
    kafka_min_insync_replicas: int | None = None
    nats_stream_replicas: int | None = None


@dataclass(frozen=True)
class Provisioned:
    """What became of one broker object: created, exists, MISMATCH (with the differences),
    would create (dry run) or FAILED (with the broker's refusal)."""

    kind: str
    """topic | stream | queue | exchange"""
    name: str
    outcome: str
    detail: str = ""
    degraded: bool = False
    """Created, but with less than wanted (NATS: fewer replicas than the cluster size asked for)."""

    def line(self) -> str:
        return f"{self.kind} {self.name}: {self.outcome}" + (f" ({self.detail})" if self.detail else "")

    @property
    def level(self) -> int:
        """The log level a service reports it at."""
        if self.outcome == FAILED:
            return logging.ERROR
        if self.outcome == MISMATCH or self.degraded:
            return logging.WARNING
        return logging.INFO if self.outcome == CREATED else logging.DEBUG


def kafka_replication_factor(brokers: int, configured: int | None) -> int:
    """KAFKA_REPLICATION_FACTOR, else min(3, brokers in the cluster) (at least 1)."""
    if configured is not None:
        return configured
    return max(1, min(MAX_REPLICAS, brokers))


def kafka_min_insync_replicas(replication_factor: int, configured: int | None) -> int | None:
    """KAFKA_MIN_INSYNC_REPLICAS, else RF − 1 when RF ≥ 2; None: not set (the broker's default applies)."""
    if configured is not None:
        return configured
    return replication_factor - 1 if replication_factor >= 2 else None


def nats_replicas(cluster_size: int | None, configured: int | None) -> int:
    """NATS_STREAM_REPLICAS, else min(3, servers in the cluster); 3 when the size is unknown."""
    if configured is not None:
        return configured
    return max(1, min(MAX_REPLICAS, cluster_size or MAX_REPLICAS))


def differences(wanted: Mapping[str, object], actual: Mapping[str, object]) -> list[str]:
    """`<setting> <actual> (wanted <wanted>)` for each setting that differs; a wanted None is
    not compared (nothing was asked for), an actual None reads `unset`."""
    return [
        f"{what} {'unset' if actual.get(what) is None else actual.get(what)} (wanted {value})"
        for what, value in wanted.items()
        if value is not None and actual.get(what) != value
    ]


def settings_text(settings: Mapping[str, object]) -> str:
    """`partitions 6, replication factor 3` (unset settings left out)."""
    return ", ".join(f"{what} {value}" for what, value in settings.items() if value is not None)


def compared(kind: str, name: str, wanted: Mapping[str, object], actual: Mapping[str, object]) -> Provisioned:
    """EXISTS, or MISMATCH naming the differences, for an object that was already there."""
    diff = differences(wanted, actual)
    return Provisioned(kind, name, MISMATCH, "; ".join(diff)) if diff else Provisioned(kind, name, EXISTS)


def log_outcomes(outcomes: Iterable[Provisioned], logger: logging.Logger) -> None:
    """One log line per object; a mismatch says it was left as it is."""
    for outcome in outcomes:
        suffix = "; left as it is, an operator decides" if outcome.outcome == MISMATCH else ""
        logger.log(outcome.level, "provisioning: %s%s", outcome.line(), suffix)
