"""How far JetStream consumers are behind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nats.js.errors import NotFoundError

from brokers.nats.connection import stream_name

if TYPE_CHECKING:
    from brokers.nats.connection import NatsConnection


class NatsLag:
    """`brokers.interface.Lag` for JetStream."""

    def __init__(self, conn: NatsConnection) -> None:
        self._conn = conn

    async def consumer_lag(self, channel: str, consumer: str) -> int | None:
        """Messages the durable has not been delivered yet (`num_pending`)."""
        try:
            info = await self._conn.js.consumer_info(stream_name(channel), consumer)
        except NotFoundError:
            return None
        return int(info.num_pending or 0)

    def consuming(self) -> bool:
        return True
