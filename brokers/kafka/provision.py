"""Kafka topics, created before use with a partition count and replication factor.

Wanted per topic: KAFKA_PARTITIONS (3); RF = KAFKA_REPLICATION_FACTOR, else min(3, brokers
in the cluster metadata); `min.insync.replicas` = KAFKA_MIN_INSYNC_REPLICAS, else RF − 1
when RF ≥ 2 (else not set); retry and `.DLT` topics also `max.message.bytes` = the broker's
`message.max.bytes` + COPY_HEADROOM_BYTES, so a copy with its envelope headers fits wherever its
original did. An existing topic is described and compared: a difference is reported, never
altered (more partitions would move keys to other partitions).

Never describe a topic before it exists: a metadata request naming a missing topic makes a
broker with `auto.create.topics.enable` create it with its defaults (1 partition). Missing
topics are found in the full topic list, and a creation another service won meanwhile
(TOPIC_ALREADY_EXISTS) is compared like any existing topic.
"""

from __future__ import annotations

import asyncio
import re
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
MAX_MESSAGE = "max.message.bytes"
BROKER_MAX_MESSAGE = "message.max.bytes"
DEFAULT_MESSAGE_MAX_BYTES = 1048588
"""Kafka's default `message.max.bytes` (1 MiB + 12), used when the broker's cannot be read."""
COPY_HEADROOM_BYTES = 64 * 1024
"""Retry and dead-letter topics accept records this much larger than the broker's `message.max.bytes`:
a copy is the source record plus its envelope headers, so any record the broker accepted fits."""
COPY_TOPIC = re.compile(r"(\.DLT|\.retry-\d+ms)$")
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
    cluster = await admin.describe_cluster()
    brokers = len(cluster["brokers"])
    wanted = wanted_settings(brokers, provisioning)
    copy_limit = await copy_topic_limit(admin, cluster)
    present = set(await admin.list_topics())
    missing = [name for name in names if name not in present]
    outcomes: dict[str, Provisioned] = {}
    if dry_run:
        outcomes.update(
            (name, Provisioned(KIND, name, WOULD_CREATE, settings_text(_wanted_for(name, wanted, copy_limit))))
            for name in missing
        )
    elif missing:
        outcomes.update(await _create(admin, missing, wanted, copy_limit))
        await _until_led(admin, [name for name, o in outcomes.items() if o.outcome == CREATED])
    existing = [name for name in names if name not in outcomes]
    if existing:
        actual = await _describe(admin, existing, with_min_isr=wanted[MIN_ISR] is not None)
        for name in existing:
            if "partitions" in actual[name]:
                outcomes[name] = compared(KIND, name, _wanted_for(name, wanted, copy_limit), actual[name])
            else:
                outcomes[name] = Provisioned(KIND, name, EXISTS, "not in the cluster metadata yet: not compared")
    return [outcomes[name] for name in names]


def is_copy_topic(name: str) -> bool:
    """A dead-letter (`<channel>.DLT`) or retry tier (`….retry-<delay>ms`) topic: written with copies of records."""
    return COPY_TOPIC.search(name) is not None


async def copy_topic_limit(admin: AIOKafkaAdminClient, cluster: dict[str, Any]) -> int:
    """`max.message.bytes` of retry and dead-letter topics: the broker's `message.max.bytes` + COPY_HEADROOM_BYTES."""
    limit = DEFAULT_MESSAGE_MAX_BYTES
    if cluster["brokers"]:
        broker_id = str(cluster["brokers"][0]["node_id"])
        resource = ConfigResource(ConfigResourceType.BROKER, broker_id, {BROKER_MAX_MESSAGE: None})
        for response in await admin.describe_configs([resource]):
            for described in response.to_object()["resources"]:
                for entry in described["config_entries"]:
                    if entry["config_names"] == BROKER_MAX_MESSAGE and entry["config_value"]:
                        limit = int(entry["config_value"])
    return limit + COPY_HEADROOM_BYTES


def _wanted_for(name: str, wanted: dict[str, int | None], copy_limit: int) -> dict[str, int | None]:
    return {**wanted, MAX_MESSAGE: copy_limit} if is_copy_topic(name) else wanted


async def _create(
    admin: AIOKafkaAdminClient, names: list[str], wanted: dict[str, int | None], copy_limit: int
) -> dict[str, Provisioned]:
    """Outcomes of the topics created or refused; those another service created meanwhile are left out."""
    new = []
    for n in names:
        settings = _wanted_for(n, wanted, copy_limit)
        configs = {k: str(settings[k]) for k in (MIN_ISR, MAX_MESSAGE) if settings.get(k) is not None}
        new.append(NewTopic(n, wanted["partitions"], wanted["replication factor"], topic_configs=configs))
    response = await admin.create_topics(new)
    outcomes: dict[str, Provisioned] = {}
    for error in response.to_object()["topic_errors"]:
        name, code = error["topic"], error["error_code"]
        if code == 0:
            outcomes[name] = Provisioned(KIND, name, CREATED, settings_text(_wanted_for(name, wanted, copy_limit)))
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
    wanted_configs = ([MIN_ISR] if with_min_isr else []) + [MAX_MESSAGE]
    resources = [
        ConfigResource(
            ConfigResourceType.TOPIC,
            name,
            dict.fromkeys(k for k in wanted_configs if k != MAX_MESSAGE or is_copy_topic(name)),
        )
        for name in names
    ]
    for response in await admin.describe_configs([r for r in resources if r.configs]):
        for resource in response.to_object()["resources"]:
            for entry in resource["config_entries"]:
                if entry["config_names"] in wanted_configs and entry["config_value"] is not None:
                    actual.setdefault(resource["resource_name"], {})[entry["config_names"]] = int(entry["config_value"])
    return actual


def used_topics(broker: Any) -> set[str]:
    """Every topic `broker` (FastStream's) subscribes or publishes to: channels, retry tiers, DLTs."""
    subscribed = {topic.name for subscriber in broker.subscribers for topic in subscriber.topics}
    return subscribed | {publisher.topic for publisher in broker.publishers}
