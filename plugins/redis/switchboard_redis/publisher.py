"""Publishing: XADD of the documented entry layout, pipelined for a batch.

Durability is the server's: with AOF `appendfsync always` Redis answers XADD only after the
entry is written and fsynced (scripts/brokers.sh starts it so)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import SpanKind

from brokers.engine.publishing import PublishedMetrics
from brokers.model import Outgoing
from switchboard_redis.connection import RedisConnection, entry_fields

if TYPE_CHECKING:
    from brokers.model import Observability


class RedisPublisher:
    """`brokers.interface.Publisher` on redis-py."""

    def __init__(self, connection: RedisConnection, label: str, observability: Observability) -> None:
        self._connection = connection
        self._label = label
        self._observability = observability
        self._metrics: PublishedMetrics | None = None

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """One XADD per message in one pipeline (no transaction): sent in order, one reply each."""
        pipe = self._connection.client.pipeline(transaction=False)
        for m in messages:
            pipe.xadd(m.channel, entry_fields(m.body, m.key, m.headers))  # type: ignore[arg-type]
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001 - the connection failed: every message failed
            return [exc] * len(messages)
        return [r if isinstance(r, BaseException) else None for r in replies]

    async def publish(self, message: Outgoing) -> None:
        """The traced path: a producer span around the XADD, its context carried in the headers;
        counted in FastStream's publish metrics like the batch path."""
        provider = self._observability.tracer_provider or trace.NoOpTracerProvider()
        tracer = provider.get_tracer("switchboard.redis")
        started = time.perf_counter()
        with tracer.start_as_current_span(
            f"{message.channel} publish",
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": self._label, "messaging.destination.name": message.channel},
        ):
            headers = dict(message.headers)
            inject(headers)
            [outcome] = await self.send_batch([Outgoing(message.channel, message.body, message.key, headers)])
        self._published_metrics().count([self.destination_label(message)], [outcome], time.perf_counter() - started)
        if outcome is not None:
            raise outcome

    def destination_label(self, message: Outgoing) -> str:
        return message.channel

    def _published_metrics(self) -> PublishedMetrics:
        if self._metrics is None:
            self._metrics = PublishedMetrics(self._label, self._observability)
        return self._metrics
