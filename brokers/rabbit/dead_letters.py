"""`<channel>.DLT`: the fanout exchange dead letters are published to, bound to the durable
queue `<channel>.DLT` (listed and replayed from) and to one queue per dead-letter listener,
so listening never takes a message off the DLT (`brokers.interface.DeadLetters`)."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from aio_pika.exceptions import ChannelNotFoundEntity
from faststream import AckPolicy

from brokers.engine.faststream import dead_letter_endpoint, decode_raw
from brokers.foreign_headers import amqp_value, application_headers
from brokers.model import EVENT_TYPE_HEADER, DeadLetter
from brokers.rabbit.copies import text
from brokers.rabbit.names import dead_letter_exchange, dead_letter_queue, exchange_of, listener_queue

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage

    from brokers.interface import DeadLetterHandler
    from brokers.rabbit.connection import RabbitConnection


GET_TIMEOUT_S = 60.0
"""One `basic.get` of a dead letter: up to `max_message_size` (128 MiB) on a busy machine (aio-pika's default is 5 s)."""

class RabbitDeadLetters:
    def __init__(self, state: RabbitConnection) -> None:
        self._state = state

    def listen(self, channel: str, consumer: str, handler: DeadLetterHandler) -> None:
        dlt = dead_letter_exchange(channel)
        self._state.dead_letter_channels.add(channel)
        self._state.broker.subscriber(
            listener_queue(channel, consumer),
            dlt,
            ack_policy=AckPolicy.ACK,
            decoder=decode_raw,
            title=f"{dlt.name}:{consumer}",
            description=f"{consumer} reports every dead letter of {channel}.",
        )(dead_letter_endpoint(channel, handler))

    async def list(self, channel: str, limit: int) -> builtins.list[DeadLetter]:
        return await self._drain(channel, limit, consume=False)

    async def replay(self, channel: str, limit: int) -> builtins.list[DeadLetter]:
        return await self._drain(channel, limit, consume=True)

    async def _drain(self, channel: str, limit: int, *, consume: bool) -> builtins.list[DeadLetter]:
        chan = await (await self._state.connect()).channel()
        letters: builtins.list[DeadLetter] = []
        held: builtins.list[AbstractIncomingMessage] = []
        try:
            try:  # passively: the queue is provisioned (a quorum queue; a legacy classic one is used as it is)
                queue = await chan.declare_queue(dead_letter_queue(channel).name, passive=True)
            except ChannelNotFoundEntity:
                return letters  # no DLT queue: nothing was dead-lettered
            # only what is there now: a replayed message that fails again is a new dead letter
            waiting = int(queue.declaration_result.message_count or 0)
            while len(letters) < min(limit, waiting):
                incoming = await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT_S)
                if incoming is None:
                    break
                raw = tuple((incoming.headers or {}).items())
                headers = {k: text(v) for k, v in raw}
                letter = DeadLetter(queue.name, incoming.body, headers, str(incoming.delivery_tag), raw)
                letters.append(letter)
                if consume:
                    await self._republish(letter, headers, raw)
                    await incoming.ack()
                else:
                    held.append(incoming)
        finally:
            for incoming in held:
                await incoming.nack(requeue=True)
            if not chan.is_closed:
                await chan.close()
        return letters

    async def _republish(self, letter: DeadLetter, headers: dict[str, str], raw: tuple[tuple[str, Any], ...]) -> None:
        """Back to the original channel, AMQP values as they came, without any framework's bookkeeping headers."""
        await self._state.broker.publish(
            letter.body,
            exchange=exchange_of(letter.original_destination),
            routing_key=headers.get(EVENT_TYPE_HEADER, ""),
            persist=True,
            headers={k: amqp_value(v) for k, v in application_headers(raw)},
        )
