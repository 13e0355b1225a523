"""Connection, provisioning and the transport's own background work."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from brokers.engine.faststream import ping
from brokers.nats.advisories import watch_max_deliveries
from brokers.provisioning import log_outcomes

if TYPE_CHECKING:
    from brokers.nats.bodies import DeadLetterWriter
    from brokers.nats.channels import NatsChannels
    from brokers.nats.connection import NatsConnection
    from brokers.nats.consumer import NatsConsumer
    from brokers.nats.dead_letters import NatsDeadLetters

log = logging.getLogger("switchboard.nats")


class NatsLifecycle:
    """`brokers.interface.Lifecycle` for JetStream."""

    def __init__(
        self,
        conn: NatsConnection,
        channels: NatsChannels,
        consumer: NatsConsumer,
        dead_letters: NatsDeadLetters,
        writer: DeadLetterWriter,
    ) -> None:
        self.conn = conn
        self._channels = channels
        self._consumer = consumer
        self._dead_letters = dead_letters
        self._writer = writer

    async def connect(self) -> None:
        await self.conn.broker.connect()

    async def start(self) -> None:
        """Provision the streams (PROVISION off: FastStream declares none either; an operator did),
        watch for messages JetStream stopped redelivering, and start the pull loops."""
        conn = self.conn
        if conn.context.provisioning.enabled:
            log_outcomes(await self._channels.provision(), log)
        else:
            for stream in conn.streams.values():
                stream.declare = False
        for sub in conn.subscriptions:
            await watch_max_deliveries(conn, self._writer, sub)
        self._consumer.start()
        self._dead_letters.start()

    async def stop(self) -> None:
        """The pull loops end with their FastStream subscribers (`broker.stop`); tools that never
        start the broker end them here."""
        for loop in [*self._consumer.batches, *self._dead_letters.listeners]:
            if not loop.subscriber.running:
                await loop.unsubscribe()

    async def ping(self, within_s: float) -> bool:
        return await ping(self.conn.broker, within_s)
