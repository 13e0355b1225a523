"""Offset commits: coalesced per consumer, and kept out of the group's rebalances."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("switchboard.kafka")

REVOKE_SETTLE_S = 5.0
"""How long a revocation waits for the batches in flight to be handled and settled (a batch
takes ~0.1 s); the group's rebalance waits for it meanwhile."""


class CommitGate(ConsumerRebalanceListener):  # type: ignore[misc]
    """Keeps one subscriber's explicit commits out of its group's rebalances. aiokafka answers a
    commit that meets a new generation by dropping the member id and joining anew, and the
    group then waits a whole session timeout for the vanished member.

    When partitions are revoked, the batches already handed to the handlers are first
    finished and settled (at most REVOKE_SETTLE_S), and everything settled is committed in the
    revocation, with the generation still valid: the partitions' next owner starts after them
    instead of handling them again. Offsets settled later wait for the new assignment."""

    def __init__(self, settled: Callable[[], Awaitable[None]]) -> None:
        self.open = True
        self.committers: list[Committer] = []
        self._settled = settled

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            try:
                async with asyncio.timeout(REVOKE_SETTLE_S):
                    await self._settled()
            except TimeoutError:
                log.warning(
                    "batches still running after %.0f s of a rebalance; their records come again", REVOKE_SETTLE_S
                )
        for committer in self.committers:
            await committer.flush()
        self.open = False

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.open = True
        for committer in self.committers:
            committer.keep_only(set(assigned))
            committer.kick()


class Committer:
    """Coalesces offset commits of one consumer (see `KafkaConsumer.settle`)."""

    def __init__(self, consumer: AIOKafkaConsumer, gate: CommitGate) -> None:
        self.consumer = consumer
        self.gate = gate
        gate.committers.append(self)
        self._pending: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    def mark(self, tp: TopicPartition, next_offset: int) -> None:
        self._pending[tp] = max(next_offset, self._pending.get(tp, 0))
        self.kick()

    def kick(self) -> None:
        if self.gate.open and self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self.flush())

    def keep_only(self, assigned: set[TopicPartition]) -> None:
        """Forget offsets of partitions another member owns now (it reads them again)."""
        self._pending = {tp: offset for tp, offset in self._pending.items() if tp in assigned}

    async def committed(self) -> None:
        """Return once nothing marked is left to commit (or the gate holds it: the partitions
        are being reassigned and their next owner reads those records again)."""
        if self._task is not None:
            await self._task
        await self.flush()

    async def flush(self) -> None:
        while self._pending and self.gate.open:
            batch, self._pending = self._pending, {}
            try:
                await self.consumer.commit(batch)
            except Exception as exc:  # noqa: BLE001 - e.g. a rebalance: the records come again, handlers are idempotent
                log.warning("offset commit of %d partition(s) failed: %s", len(batch), exc)


class Commits:
    """The gates (one per subscribed topic) and committers (one per consumer) of a transport."""

    def __init__(self, settled: Callable[[], Awaitable[None]]) -> None:
        self._settled = settled
        self._gates: dict[str, CommitGate] = {}
        self._committers: dict[AIOKafkaConsumer, Committer] = {}

    def gate(self, topic: str) -> CommitGate:
        gate = self._gates.get(topic)
        if gate is None:
            gate = self._gates[topic] = CommitGate(self._settled)
        return gate

    def committer(self, consumer: AIOKafkaConsumer, topic: str) -> Committer:
        committer = self._committers.get(consumer)
        if committer is None:
            committer = self._committers[consumer] = Committer(consumer, self.gate(topic))
        return committer

    async def committed(self) -> None:
        """Return once the offsets marked so far are committed (or held by a rebalance)."""
        await asyncio.gather(*(committer.committed() for committer in self._committers.values()))
