"""Kafka topics, created before use with a partition count and replication factor.

Wanted per topic: KAFKA_PARTITIONS (3); RF = KAFKA_REPLICATION_FACTOR, else min(3, brokers
in the cluster metadata); `min.insync.replicas` = KAFKA_MIN_INSYNC_REPLICAS, else RF − 1
when RF ≥ 2 (else not set). An existing topic is described and compared: a difference
is reported, never altered (more partitions would move keys to other partitions).

Never describe a topic before it exists: a metadata request naming a missing topic makes a
broker with `auto.create.topics.enable` create it with its defaults (1 partition). Missing
topics are found in the full topic list, and a creation another service won meanwhile
(TOPIC_ALREADY_EXISTS) is compared like any existing topic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from brokers.provisioning import (
    CREATED,
    EXISTS,
    FAILED,
    WOULD_CREATE,
    Provisioned,
    Provisioning,
    compared,
    kafka_min_insync_replicas,
    kafka_replication_factor,
    settings_text,
)

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

KIND = "topic"
MIN_ISR = "min.insync.replicas"
DESCRIBE_ATTEMPTS = 10
DESCRIBE_RETRY_S = 0.2
"""A topic another service just created may not be in this broker's metadata yet."""


def wanted_settings(brokers: int, provisioning: Provisioning) -> dict[str, int | None]:
    rf = kafka_replication_factor(brokers, provisioning.kafka_replication_factor)
    return {
        "partitions": provisioning.kafka_partitions,
        "replication factor": rf,
        MIN_ISR: kafka_min_insync_replicas(rf, provisioning.kafka_min_insync_replicas),
    }


async def provision_topics(
    admin: AIOKafkaAdminClient, topics: Iterable[str], provisioning: Provisioning, *, dry_run: bool = False
) -> list[Provisioned]:
    """Create each missing topic of `topics` (dry run: report it), compare the others."""
    names = sorted(set(topics))
    if not names:
        return []
    brokers = len((await admin.describe_cluster())["brokers"])
    wanted = wanted_settings(brokers, provisioning)
    present = set(await admin.list_topics())
    missing = [name for name in names if name not in present]
    outcomes: dict[str, Provisioned] = {}
    if dry_run:
        outcomes.update((name, Provisioned(KIND, name, WOULD_CREATE, settings_text(wanted))) for name in missing)
    elif missing:
        outcomes.update(await _create(admin, missing, wanted))
        await _until_led(admin, [name for name, o in outcomes.items() if o.outcome == CREATED])
    existing = [name for name in names if name not in outcomes]
    if existing:
        actual = await _describe(admin, existing, with_min_isr=wanted[MIN_ISR] is not None)
        for name in existing:
            if "partitions" in actual[name]:
                outcomes[name] = compared(KIND, name, wanted, actual[name])
            else:
                outcomes[name] = Provisioned(KIND, name, EXISTS, "not in the cluster metadata yet: not compared")
    return [outcomes[name] for name in names]


async def _create(
    admin: AIOKafkaAdminClient, names: list[str], wanted: dict[str, int | None]
) -> dict[str, Provisioned]:
    """Outcomes of the topics created or refused; those another service created meanwhile are left out."""
    configs = {MIN_ISR: str(wanted[MIN_ISR])} if wanted[MIN_ISR] is not None else {}
    new = [NewTopic(n, wanted["partitions"], wanted["replication factor"], topic_configs=configs) for n in names]
    response = await admin.create_topics(new)
    outcomes: dict[str, Provisioned] = {}
    for error in response.to_object()["topic_errors"]:
        name, code = error["topic"], error["error_code"]
        if code == 0:
            outcomes[name] = Provisioned(KIND, name, CREATED, settings_text(wanted))
        elif code != TopicAlreadyExistsError.errno:
            outcomes[name] = Provisioned(KIND, name, FAILED, f"error {code}: {error.get('error_message') or ''}")
    return outcomes


async def _until_led(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    """Wait (a little) until the broker's metadata has the new topics with a leader for every
    partition: a consumer subscribing before that logs "Topic … not found in cluster metadata"."""
    for _ in range(DESCRIBE_ATTEMPTS):
        if not names:
            return
        described = await admin.describe_topics(names)
        names = [
            t["topic"]
            for t in described
            if t["error_code"] or not t["partitions"] or any(p["leader"] < 0 for p in t["partitions"])
        ]
        if names:
            await asyncio.sleep(DESCRIBE_RETRY_S / 4)


async def _describe(admin: AIOKafkaAdminClient, names: list[str], *, with_min_isr: bool) -> dict[str, dict[str, Any]]:
    """Partitions, replication factor and (when asked) min.insync.replicas of existing topics."""
    actual: dict[str, dict[str, Any]] = {}
    pending = list(names)
    for attempt in range(DESCRIBE_ATTEMPTS):
        for topic in await admin.describe_topics(pending):
            partitions = topic["partitions"]
            if topic["error_code"] == 0 and partitions:
                actual[topic["topic"]] = {
                    "partitions": len(partitions),
                    "replication factor": max(len(p["replicas"]) for p in partitions),
                }
        pending = [name for name in pending if name not in actual]
        if not pending:
            break
        if attempt < DESCRIBE_ATTEMPTS - 1:
            await asyncio.sleep(DESCRIBE_RETRY_S)
    for name in pending:
        actual[name] = {}
    if with_min_isr:
        resources = [ConfigResource(ConfigResourceType.TOPIC, name, {MIN_ISR: None}) for name in names]
        for response in await admin.describe_configs(resources):
            for resource in response.to_object()["resources"]:
                for entry in resource["config_entries"]:
                    if entry["config_names"] == MIN_ISR and entry["config_value"] is not None:
                        actual.setdefault(resource["resource_name"], {})[MIN_ISR] = int(entry["config_value"])
    return actual


def used_topics(broker: Any) -> set[str]:
    """Every topic `broker` (FastStream's) subscribes or publishes to: channels, retry tiers, DLTs."""
    subscribed = {topic.name for subscriber in broker.subscribers for topic in subscriber.topics}
    return subscribed | {publisher.topic for publisher in broker.publishers}
