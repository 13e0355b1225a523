"""RabbitMQ queues and exchanges, declared explicitly: every queue a quorum queue.

What a service uses: its subscribers' queues (consumer queues `<channel>.<consumer>`,
dead-letter listener queues `<channel>.DLT.<consumer>`) with the exchanges they are bound
to, its publishers' exchanges, and what the transport adds (`RabbitChannels.provision`):
the delay queues `<queue>.retry-<delay>ms` and the contract's DLT queues `<channel>.DLT`,
bound to their dead-letter exchanges.

Each object is declared passively first: a missing one is created (dry run: reported) with
the wanted arguments; an existing one is declared again with them, which RabbitMQ answers
with PRECONDITION_FAILED (closing the channel) when it was declared otherwise. Then its
reply, which names the first differing argument, is reported as MISMATCH and the object is
used as it is: FastStream's own declaration of it becomes passive (`declare = False`), so a
subscriber neither crashes on it nor changes it. Declarations run on channels of their own
(non-robust: a refused one stays closed and the next declaration opens another).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.exceptions import AMQPError, ChannelNotFoundEntity, ChannelPreconditionFailed

from brokers.provisioning import CREATED, EXISTS, FAILED, MISMATCH, WOULD_CREATE, Provisioned

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection
    from faststream.rabbit import RabbitExchange, RabbitQueue

log = logging.getLogger("switchboard.rabbit")

QUEUE = "queue"
EXCHANGE = "exchange"
Plan = list[tuple["RabbitQueue", "RabbitExchange | None"]]
"""Queues to provision, each with the exchange it is bound to (None: reached through the default exchange)."""


def subscriber_queues(broker: Any) -> Plan:
    """The queue of each of FastStream's `RabbitBroker` subscribers, with the exchange it is bound to."""
    return [(s.queue, s.exchange if s.exchange.name else None) for s in broker.subscribers]


def declare_nothing(broker: Any) -> None:
    """PROVISION off: FastStream's declarations of subscriber queues and of exchanges become
    passive (they must exist; a passive declaration needs no `configure` permission)."""
    for subscriber in broker.subscribers:
        subscriber.queue.declare = False
        subscriber.exchange.declare = False
    for publisher in broker.publishers:
        if publisher.exchange is not None:
            publisher.exchange.declare = False


async def provision_objects(
    broker: Any, connection: AbstractConnection, own: Plan, *, dry_run: bool = False
) -> list[Provisioned]:
    """Provision the exchanges, then the queues (and their bindings) of `broker`'s subscribers,
    publishers and `own`, on `connection` (the broker's). One outcome per object, exchanges first."""
    plan = [*subscriber_queues(broker), *own]
    exchanges: dict[str, RabbitExchange] = {}
    for publisher in broker.publishers:
        if publisher.exchange is not None and publisher.exchange.name:
            exchanges.setdefault(publisher.exchange.name, publisher.exchange)
    for _, exchange in plan:
        if exchange is not None:
            exchanges.setdefault(exchange.name, exchange)
    declarer = Declarer(connection, dry_run=dry_run)
    try:
        outcomes = {name: await declarer.exchange(exchange) for name, exchange in sorted(exchanges.items())}
        for name, outcome in outcomes.items():
            if outcome.outcome == MISMATCH:
                use_as_it_is(broker, exchange=name)
        queues: dict[str, Provisioned] = {}
        for queue, exchange in plan:
            if queue.name in queues:
                continue
            queues[queue.name] = outcome = await declarer.queue(queue)
            if outcome.outcome == MISMATCH:
                use_as_it_is(broker, queue=queue.name)
            usable = outcome.outcome in (CREATED, EXISTS, MISMATCH)
            if exchange is not None and usable and outcomes[exchange.name].outcome != FAILED and not dry_run:
                try:
                    await declarer.bind(queue, exchange)
                except AMQPError as exc:  # e.g. no `write` permission: reported, the service still starts
                    log.warning("provisioning: could not bind queue %s to %s: %s", queue.name, exchange.name, exc)
    finally:
        await declarer.close()
    return [*outcomes.values(), *sorted(queues.values(), key=lambda outcome: outcome.name)]


def use_as_it_is(broker: Any, *, queue: str = "", exchange: str = "") -> None:
    """FastStream declares the mismatched queue or exchange passively: it uses it as it is."""
    for subscriber in broker.subscribers:
        if queue and subscriber.queue.name == queue:
            subscriber.queue.declare = False
        if exchange and subscriber.exchange.name == exchange:
            subscriber.exchange.declare = False
    for publisher in broker.publishers:
        if exchange and publisher.exchange is not None and publisher.exchange.name == exchange:
            publisher.exchange.declare = False


def queue_text(queue: RabbitQueue) -> str:
    args = queue.arguments or {}
    text = str(args.get("x-queue-type", "classic"))
    if "x-message-ttl" in args:
        text += f", message TTL {args['x-message-ttl']} ms"
    if "x-dead-letter-strategy" in args:
        text += f", dead-lettering {args['x-dead-letter-strategy']}"
    return text


class Declarer:
    """Declares on a channel of its own (non-robust: a refused declaration closes it, and the next
    declaration opens another)."""

    def __init__(self, connection: AbstractConnection, *, dry_run: bool) -> None:
        self._connection = connection
        self._dry_run = dry_run
        self._channel: AbstractChannel | None = None

    async def _open(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            channel = aio_pika.Channel(self._connection)
            await channel.initialize()
            self._channel = channel
        return self._channel

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def queue(self, queue: RabbitQueue) -> Provisioned:
        return await self._ensure(
            QUEUE, queue.name, lambda ch, passive: _declare_queue(ch, queue, passive), queue_text(queue)
        )

    async def exchange(self, exchange: RabbitExchange) -> Provisioned:
        text = f"{exchange.type.value}{', durable' if exchange.durable else ''}"
        return await self._ensure(
            EXCHANGE, exchange.name, lambda ch, passive: _declare_exchange(ch, exchange, passive), text
        )

    async def _ensure(self, kind: str, name: str, declare: Any, text: str) -> Provisioned:
        try:
            await declare(await self._open(), True)
        except ChannelNotFoundEntity:
            if self._dry_run:
                return Provisioned(kind, name, WOULD_CREATE, text)
            try:
                await declare(await self._open(), False)
            except ChannelPreconditionFailed as exc:  # declared otherwise meanwhile
                return Provisioned(kind, name, MISMATCH, _reply(exc))
            except AMQPError as exc:
                return Provisioned(kind, name, FAILED, _reply(exc))
            return Provisioned(kind, name, CREATED, text)
        try:
            await declare(await self._open(), False)
        except ChannelPreconditionFailed as exc:
            return Provisioned(kind, name, MISMATCH, _reply(exc))
        except AMQPError as exc:  # e.g. ACCESS_REFUSED: no `configure` permission on it
            return Provisioned(kind, name, EXISTS, f"not compared: {_reply(exc)}")
        return Provisioned(kind, name, EXISTS)

    async def bind(self, queue: RabbitQueue, exchange: RabbitExchange) -> None:
        channel = await (await self._open()).get_underlay_channel()
        await channel.queue_bind(queue.name, exchange.name, routing_key=queue.routing(), arguments=queue.bind_arguments)


async def _declare_queue(channel: AbstractChannel, queue: RabbitQueue, passive: bool) -> None:
    if passive:
        await channel.declare_queue(queue.name, passive=True)
    else:
        await channel.declare_queue(
            queue.name,
            durable=queue.durable,
            exclusive=queue.exclusive,
            auto_delete=queue.auto_delete,
            arguments=queue.arguments,
        )


async def _declare_exchange(channel: AbstractChannel, exchange: RabbitExchange, passive: bool) -> None:
    if passive:
        await channel.declare_exchange(exchange.name, passive=True)
    else:
        await channel.declare_exchange(
            exchange.name,
            type=exchange.type.value,
            durable=exchange.durable,
            auto_delete=exchange.auto_delete,
            arguments=exchange.arguments,
        )


def _reply(exc: BaseException) -> str:
    """RabbitMQ's reply text (`PRECONDITION_FAILED - inequivalent arg 'x-queue-type' …`)."""
    return str(exc.args[0]) if exc.args else type(exc).__name__
