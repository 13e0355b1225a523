"""Exchanges and queues: what the service publishes, and provisioning (`brokers.interface.Channels`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from brokers.rabbit.names import dead_letter_exchange, dead_letter_queue, exchange_of
from brokers.rabbit.provision import provision_objects

if TYPE_CHECKING:
    from faststream.rabbit import RabbitExchange, RabbitQueue

    from brokers.provisioning import Provisioned
    from brokers.rabbit.connection import RabbitConnection


class RabbitChannels:
    def __init__(self, state: RabbitConnection) -> None:
        self._state = state

    def declare_publisher(self, channel: str, schema: Any, description: str) -> None:
        state = self._state
        if channel not in state.declared_publishers:
            state.declared_publishers.add(channel)
            state.broker.publisher(
                exchange=exchange_of(channel), title=channel, description=description, schema=schema, persist=True
            )

    async def provision(self, *, dry_run: bool = False) -> list[Provisioned]:
        """The subscribers' queues and exchanges, the publishers' exchanges, the delay queues and
        the DLT queues bound to their dead-letter exchanges (`brokers.rabbit.provision`)."""
        state = self._state
        own: list[tuple[RabbitQueue, RabbitExchange | None]] = [(q, None) for q in state.queues_to_declare.values()]
        own += [(dead_letter_queue(c), dead_letter_exchange(c)) for c in sorted(state.dead_letter_channels)]
        return await provision_objects(state.broker, await state.connect(), own, dry_run=dry_run)
