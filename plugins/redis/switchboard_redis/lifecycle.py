"""`brokers.interface.Lifecycle`: the redis-py connection, provisioning and the read loops."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from brokers.provisioning import log_outcomes

if TYPE_CHECKING:
    from faststream.redis import RedisBroker

    from brokers.interface import TransportContext
    from switchboard_redis.channels import RedisChannels
    from switchboard_redis.connection import RedisConnection
    from switchboard_redis.consumer import RedisConsumer
    from switchboard_redis.dead_letters import RedisDeadLetters

log = logging.getLogger("switchboard.redis")


class RedisLifecycle:
    """Connects, provisions, starts the subscriptions' loops (the FastStream RedisBroker runs no
    subscriber: it serves the app lifecycle and the AsyncAPI document)."""

    def __init__(
        self,
        context: TransportContext,
        connection: RedisConnection,
        broker: RedisBroker,
        channels: RedisChannels,
        consumer: RedisConsumer,
        dead_letters: RedisDeadLetters,
    ) -> None:
        self._context = context
        self._connection = connection
        self._broker = broker
        self._channels = channels
        self._consumer = consumer
        self._dead_letters = dead_letters

    async def connect(self) -> None:
        await self._broker.connect()
        await self._connection.client.ping()

    async def start(self) -> None:
        await self._connection.client.ping()
        if self._context.provisioning.enabled:
            log_outcomes(await self._channels.provision(), log)
        await self._consumer.start()
        await self._dead_letters.start(self._consumer.stopping)

    async def stop(self) -> None:
        self._consumer.stopping.set()
        await self._dead_letters.stopped()
        await self._connection.close()

    async def ping(self, within_s: float) -> bool:
        return await self._connection.ping(within_s)
