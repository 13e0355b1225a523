"""Persistent publishes with publisher confirms (`brokers.interface.Publisher`)."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aio_pika.exceptions import DeliveryError
from faststream.rabbit.schemas import Channel

from brokers.engine.publishing import confirmations
from brokers.rabbit.copies import Copy, addressed
from brokers.rabbit.names import exchange_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from brokers.model import Outgoing
    from brokers.rabbit.connection import RabbitConnection

log = logging.getLogger("switchboard.rabbit")


class RabbitPublisher:
    """Publishes on a confirm-mode channel of FastStream's connection, with aio-pika's client
    calls (`send_batch`) or through FastStream's publisher (`publish`, which records spans)."""

    def __init__(self, state: RabbitConnection) -> None:
        self._state = state
        self._publishing = Channel()
        """The channel `send_batch` publishes on (FastStream keeps one channel per `Channel` object)."""

    async def publish(self, message: Outgoing) -> None:
        """Addressed as `send_batch` addresses it (a retry copy to its delay queue through the
        default exchange), through FastStream's publisher."""
        exchange, key, properties = addressed(message, datetime.now(UTC))
        await self._state.broker.publish(
            message.body,
            exchange=exchange_of(exchange) if exchange else None,
            routing_key=key,
            persist=True,
            headers=properties.headers,
            correlation_id=properties.correlation_id,
            content_type=properties.content_type,
            message_id=properties.message_id,
            timestamp=properties.timestamp,
        )

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        broker = self._state.broker
        publishing = await broker.config.channel_manager.get_channel(self._publishing)
        channel = await publishing.get_underlay_channel()
        now = datetime.now(UTC)
        sends = []  # confirm-mode channel: each resolves on the broker's ack, raises on its nack
        for m in messages:
            exchange, key, properties = addressed(m, now)
            sends.append(channel.basic_publish(m.body, exchange=exchange, routing_key=key, properties=properties))
        # no timeout of ours, as FastStream's publish: a confirm comes, or the channel closes
        # (aiormq fails what is pending); a broker under a resource alarm holds publishers back
        outcomes = await confirmations(sends, timeout_s=None)
        if any(isinstance(outcome, DeliveryError) for outcome in outcomes):
            await self._replace_publishing_channel(publishing)
        return outcomes

    async def _replace_publishing_channel(self, nacked: Any) -> None:
        """Publish on a new channel after a nack: on RabbitMQ 3.10 a channel that published while a
        quorum queue's leader died is nacked for ~30 s afterwards, while a new channel is not."""
        log.warning("RabbitMQ nacked a publish; publishing on a new channel")
        self._publishing = Channel()
        with contextlib.suppress(Exception):
            await nacked.close()

    def destination_label(self, message: Outgoing) -> str:
        """As `ChannelLevelMetrics` labels FastStream's publishes: the exchange, or
        `default.<queue>` for a copy sent to a delay queue through the default exchange."""
        if isinstance(message, Copy) and message.to_queue:
            return f"default.{message.channel}"
        return message.channel
