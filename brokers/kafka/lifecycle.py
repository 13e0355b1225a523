"""Connection, provisioning at start, the group watch, and releasing our own clients."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from brokers.engine.faststream import ping
from brokers.provisioning import log_outcomes

if TYPE_CHECKING:
    from brokers.kafka.channels import KafkaChannels
    from brokers.kafka.connection import KafkaConnection

log = logging.getLogger("switchboard.kafka")


class KafkaLifecycle:
    """`brokers.interface.Lifecycle` on Kafka."""

    def __init__(self, conn: KafkaConnection, channels: KafkaChannels) -> None:
        self._conn = conn
        self._channels = channels

    async def connect(self) -> None:
        await self._conn.broker.connect()

    async def start(self) -> None:
        """Create the topics this service uses before its subscribers and outbox start (PROVISION
        off: none; FastStream's subscribers still ask for theirs, which the broker may refuse)."""
        if self._conn.context.provisioning.enabled:
            log_outcomes(await self._channels.provision(), log)
        self._conn.group_watch.start()

    async def stop(self) -> None:
        await self._conn.group_watch.stop()
        await self._conn.sender.stop()
        await self._conn.admin_clients.close()

    async def ping(self, within_s: float) -> bool:
        return await ping(self._conn.broker, within_s)
