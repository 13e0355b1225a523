"""aiokafka clients of our own, beside FastStream's: the producer `send_batch` and replay send
with, and the admin and offsets clients for lag, provisioning, group checks and DLT reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger("switchboard.kafka")

PRODUCER_BATCH_BYTES = 256 * 1024
"""Per-partition producer buffer: the outbox relay sends up to 1,024 events at once, and with
aiokafka's 16 KiB default a send finds its batch full every ~40 events and waits for the
sender. Stays under the broker's 1 MiB message limit."""
SENDER_MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""Largest record `send_batch` hands to the broker (aiokafka's own check, 1 MiB by default, would
refuse a retry copy or dead letter of a record near the broker's limit: the copy adds envelope
headers). The topic's `max.message.bytes` is the real limit: retry and DLT topics get 64 KiB more
than the broker's `message.max.bytes` (`brokers.kafka.provision`)."""
FATAL_PRODUCER_ERRORS = (
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerClosed,
)


class Sender:
    """The producer `send_batch` sends with (acks=all, idempotent), created on first use. An
    idempotent producer that meets a fatal error (e.g. `OutOfOrderSequenceNumber` after a partition
    leader was lost) fails every later send, so it is replaced (a new producer id) before the next."""

    def __init__(self, bootstrap_servers: list[str], security: dict[str, str] | None = None) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._security = security or {}
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def producer(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap_servers,
                    **self._security,
                    acks="all",
                    enable_idempotence=True,
                    max_batch_size=PRODUCER_BATCH_BYTES,
                    max_request_size=SENDER_MAX_REQUEST_BYTES,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def replace_if_broken(self, outcomes: Sequence[BaseException | None]) -> None:
        fatal = next((o for o in outcomes if is_fatal_producer_error(o)), None)
        if fatal is None or self._producer is None:
            return
        log.warning("Kafka producer failed for good (%s: %s); a new one sends from now on", type(fatal).__name__, fatal)
        broken, self._producer = self._producer, None
        with contextlib.suppress(Exception):
            await broken.stop()

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


def is_fatal_producer_error(outcome: BaseException | None) -> bool:
    """An error after which the producer sends nothing more: a broken idempotence sequence or
    epoch, or its sender task died (aiokafka then wraps the cause in a bare `KafkaError`)."""
    return isinstance(outcome, FATAL_PRODUCER_ERRORS) or type(outcome) is KafkaError


class AdminClients:
    """An offsets consumer (end and beginning offsets) and an admin client, started on first use."""

    def __init__(self, bootstrap_servers: list[str], security: dict[str, str]) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._security = security
        self._offsets: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._offsets is None or self._admin is None:
            offsets = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap_servers, enable_auto_commit=False, **self._security
            )
            admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap_servers, **self._security)
            await offsets.start()
            await admin.start()
            self._offsets, self._admin = offsets, admin
        return self._offsets, self._admin

    async def admin(self) -> AIOKafkaAdminClient:
        return (await self.clients())[1]

    async def close(self) -> None:
        offsets, admin, self._offsets, self._admin = self._offsets, self._admin, None, None
        if offsets is not None:
            await offsets.stop()
        if admin is not None:
            await admin.close()


async def partitions_of(admin: AIOKafkaAdminClient, topic: str) -> set[int] | None:
    """The partition ids of `topic` in a full metadata listing, None when it does not exist (or the
    broker reports an error for it). The listing never names the topic: a metadata request naming a
    missing topic makes a broker with `auto.create.topics.enable` create it."""
    for described in await admin.describe_topics():
        if described["topic"] == topic:
            return {p["partition"] for p in described["partitions"]} if described["error_code"] == 0 else None
    return None
