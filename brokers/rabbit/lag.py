"""Consumer lag: the ready messages of a consumer's queue (`brokers.interface.Lag`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aio_pika.exceptions import ChannelClosed

if TYPE_CHECKING:
    from brokers.rabbit.connection import RabbitConnection


class RabbitLag:
    def __init__(self, state: RabbitConnection) -> None:
        self._state = state

    async def consumer_lag(self, channel: str, consumer: str) -> int | None:
        """Ready messages in the consumer's queue (`names.consumer_queue_name`), on a channel of its
        own: a passive declaration of a missing queue closes the channel."""
        queue_name = f"{channel}.{consumer}"
        connection = self._state.open_connection()
        if connection is None:
            return None
        amqp_channel = await connection.channel()
        try:
            queue = await amqp_channel.declare_queue(queue_name, passive=True)
            return int(queue.declaration_result.message_count or 0)
        except ChannelClosed:
            return None
        finally:
            if not amqp_channel.is_closed:
                await amqp_channel.close()

    def consuming(self) -> bool:
        return True
