"""Subscriptions and the native moves: batch subscribers with explicit commits, retry tier topics,
dead letters, and the commits that finish a drain."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaRouter

from brokers.engine.faststream import (
    decode_untouched,
    handler_endpoint,
    keep_unacknowledged,
    policy_middleware,
    stop_subscribers,
)
from brokers.kafka.commits import Commits
from brokers.kafka.connection import GROUP_OPTIONS
from brokers.kafka.parsing import lenient_parser
from brokers.kafka.records import DUE_HEADER, carried_headers, deliveries, key_of, retry_topic
from brokers.model import ATTEMPTS_HEADER, BATCH_MAX, Outgoing

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from brokers.interface import Engine, Pipeline
    from brokers.kafka.connection import KafkaConnection
    from brokers.model import Delivery, Subscription

TIER_FETCH_BYTES = 64 * 1024
"""A tier is rewound whenever its head is not due yet, which throws away what was fetched
beyond it: fetch little at a time (the default, 1 MiB, is thousands of records)."""


class KafkaConsumer:
    """`brokers.interface.Consumer` on Kafka: a `getmany` batch subscriber per channel and retry
    tier; offsets are committed only up to records handled, retried or dead-lettered."""

    def __init__(self, conn: KafkaConnection, engine: Engine) -> None:
        self._conn = conn
        self._engine = engine
        self._commits = Commits(engine.settled)

    def subscribe(self, sub: Subscription, pipeline: Pipeline) -> None:
        conn = self._conn
        router = KafkaRouter(middlewares=[policy_middleware(pipeline, deliveries, keep_unacknowledged)])
        endpoint = handler_endpoint(sub)
        common: dict[str, Any] = {
            **GROUP_OPTIONS,
            "ack_policy": AckPolicy.MANUAL,
            "decoder": decode_untouched,
            "batch": True,
            "max_records": BATCH_MAX,
            "parser": lenient_parser,
        }
        group = conn.group(sub.consumer)
        main = router.subscriber(
            sub.channel,
            group_id=group,
            listener=self._commits.gate(sub.channel),
            title=f"{sub.channel}:{sub.consumer}",
            description=sub.description,
            **common,
        )
        main(endpoint)
        conn.group_watch.watch(group, sub.channel, sub.consumer, main)
        for delay_ms in conn.context.policy.retry_delays_ms():
            # each retry tier is its own group: its consumer joins without rebalancing the main group
            tier = retry_topic(sub, delay_ms)
            router.subscriber(
                tier,
                group_id=tier,
                listener=self._commits.gate(tier),
                include_in_schema=False,
                max_partition_fetch_bytes=TIER_FETCH_BYTES,
                **common,
            )(endpoint)
        conn.broker.include_router(router)
        # the DLT, for AsyncAPI (dead letters are sent with `publish_one`)
        conn.declare_publisher(
            sub.dead_letter_channel,
            sub.model,
            f"Dead letters of {sub.channel}: original bytes plus x-* envelope headers.",
        )

    async def schedule_retry(self, sub: Subscription, delivery: Delivery, attempt: int, delay_ms: int) -> None:
        headers = carried_headers(delivery)
        headers[ATTEMPTS_HEADER] = str(attempt)
        headers[DUE_HEADER] = str(int(time.time() * 1000) + delay_ms)
        await self._engine.publish_one(Outgoing(retry_topic(sub, delay_ms), delivery.body, key_of(delivery), headers))

    async def dead_letter(self, sub: Subscription, delivery: Delivery, headers: dict[str, str]) -> None:
        envelope = {**carried_headers(delivery), **headers}
        await self._engine.publish_one(Outgoing(sub.dead_letter_channel, delivery.body, key_of(delivery), envelope))

    async def settle(self, sub: Subscription, done: list[Delivery], redeliver: list[Delivery]) -> None:  # noqa: ARG002
        """Commit, per partition, past the settled records but never past the first record to
        redeliver, which the consumer is rewound to. Commits are coalesced (`Committer`)."""
        rewind: dict[tuple[Any, TopicPartition], int] = {}
        for consumer, record in (d.native for d in redeliver):
            key = (consumer, TopicPartition(record.topic, record.partition))
            rewind[key] = min(record.offset, rewind.get(key, record.offset))
        commit: dict[tuple[Any, TopicPartition], int] = {}
        for consumer, record in (d.native for d in done):
            key = (consumer, TopicPartition(record.topic, record.partition))
            commit[key] = max(record.offset + 1, commit.get(key, 0))
        for (consumer, tp), offset in rewind.items():
            consumer.seek(tp, offset)
        for (consumer, tp), next_offset in commit.items():
            committer = self._commits.committer(consumer, tp.topic)
            committer.mark(tp, min(next_offset, rewind.get((consumer, tp), next_offset)))

    async def drain(self, settled: Callable[[], Awaitable[None]]) -> None:
        """Stop reading, wait for the batches in flight, then for the offset commits of what they
        settled: the consumers stop right after."""
        stop_subscribers(self._conn.broker)
        await settled()
        await self._commits.committed()
