"""Topics: the ones published (AsyncAPI) and their provisioning (`brokers.kafka.provision`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from brokers.kafka.provision import provision_topics, used_topics

if TYPE_CHECKING:
    from brokers.kafka.connection import KafkaConnection
    from brokers.provisioning import Provisioned


class KafkaChannels:
    """`brokers.interface.Channels` on Kafka."""

    def __init__(self, conn: KafkaConnection) -> None:
        self._conn = conn

    def declare_publisher(self, channel: str, schema: Any, description: str) -> None:
        self._conn.declare_publisher(channel, schema, description)

    async def provision(self, *, dry_run: bool = False) -> list[Provisioned]:
        """Every topic subscribed or published: channels, their retry tiers and DLTs."""
        admin = await self._conn.admin_clients.admin()
        return await provision_topics(
            admin, used_topics(self._conn.broker), self._conn.context.provisioning, dry_run=dry_run
        )
