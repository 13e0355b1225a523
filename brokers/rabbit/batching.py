"""Deliveries that arrive together go through FastStream's per-message pipeline (parser,
middlewares, metrics) as one call, as Kafka's and NATS's batch subscribers do: FastStream has
no RabbitMQ batch consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika import IncomingMessage
from faststream.rabbit.message import RabbitMessage

from brokers.model import BATCH_MAX


class Batch(list[IncomingMessage]):
    """The deliveries one FastStream call of a policy subscriber handles. It answers `exchange`,
    `routing_key` and `delivery_tag` like its first message, for FastStream's metrics and
    telemetry providers, which read those of `raw_message`."""

    def __init__(self, messages: list[IncomingMessage]) -> None:
        super().__init__(messages)
        self.exchange = messages[0].exchange
        self.routing_key = messages[0].routing_key
        self.delivery_tag = messages[0].delivery_tag


class Intake:
    """One subscriber's deliveries waiting for the next FastStream call: those that arrive while a
    batch runs form the next batch (at most BATCH_MAX)."""

    def __init__(self) -> None:
        self._waiting: list[IncomingMessage] = []
        self._worker: asyncio.Task[None] | None = None
        self._consume: Callable[[Batch], Awaitable[Any]] | None = None

    def bind(self, consume: Callable[[Batch], Awaitable[Any]]) -> None:
        """FastStream's consume call a batch goes through."""
        self._consume = consume

    def add(self, message: IncomingMessage) -> None:
        self._waiting.append(message)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._consume_waiting())

    async def _consume_waiting(self) -> None:
        assert self._consume is not None, "Intake.bind was not called"
        await asyncio.sleep(0)  # deliveries of the same loop turn join
        waiting = self._waiting
        while waiting:
            batch = Batch(waiting[:BATCH_MAX])
            del waiting[:BATCH_MAX]
            await self._consume(batch)


async def parse_batch(batch: Batch) -> RabbitMessage:
    first = batch[0]
    return RabbitMessage(
        raw_message=batch,  # type: ignore[arg-type]
        body=b"",
        headers=first.headers or {},
        content_type=first.content_type,
        message_id=first.message_id or str(first.delivery_tag),
        correlation_id=first.correlation_id or str(first.delivery_tag),
    )
