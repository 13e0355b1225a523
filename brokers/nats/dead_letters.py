"""`<channel>.DLT`: listeners, listing and replay."""

from __future__ import annotations

import builtins
import contextlib
import time
from typing import TYPE_CHECKING, Any

from faststream import AckPolicy
from faststream.nats import DeliverPolicy, PullSub
from nats.errors import ConnectionClosedError
from nats.js.errors import NotFoundError, ServiceUnavailableError

from brokers.engine.faststream import dead_letter_endpoint, decode_raw
from brokers.model import DeadLetter, dead_letter_channel, replay_headers
from brokers.nats.pull import IDLE_FETCH_S, PullLoop, back_off, consumer_config
from brokers.nats.wire import check_size, dead_letter_of

if TYPE_CHECKING:
    from brokers.interface import DeadLetterHandler
    from brokers.nats.bodies import DeadLetterWriter
    from brokers.nats.connection import NatsConnection

PULL_BATCH = 32
LISTEN_FETCH_S = 5.0
REPLAY_DURABLE = "switchboard-dlt-replay"


class ListenerPull(PullLoop):
    """A dead-letter listener's pulls, `PULL_BATCH` at a time; a pull that fails at once backs off
    (`back_off`) instead of pulling again, so a closed connection never keeps the event loop
    from HTTP and SIGTERM."""

    def __init__(self, conn: NatsConnection, subscriber: Any, dlt: str, durable: str) -> None:
        super().__init__(conn, subscriber)
        self._dlt, self._durable = dlt, durable
        self.subscription: Any = None
        """nats-py's pull subscription (`fetch`)."""

    async def open(self) -> None:
        self.subscription = await self._conn.js.pull_subscribe(
            self._dlt,
            durable=self._durable,
            stream=self._conn.stream(self._dlt).name,
            config=consumer_config(self._dlt, self._durable),
        )

    async def close(self) -> None:
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):  # a closed connection has no subscriptions left
                await subscription.unsubscribe()

    async def pull_loop(self) -> None:
        failures = 0
        while self.running:
            started = time.monotonic()
            try:
                messages = await self.subscription.fetch(batch=PULL_BATCH, timeout=LISTEN_FETCH_S)
            except (TimeoutError, ConnectionClosedError, ServiceUnavailableError) as exc:
                early = not isinstance(exc, TimeoutError) or time.monotonic() - started < IDLE_FETCH_S / 2
                failures = failures + 1 if early else 0
                if early:
                    await back_off(failures)
                continue
            failures = 0
            for message in messages:
                await self.subscriber.consume(message)


class NatsDeadLetters:
    """`brokers.interface.DeadLetters` for JetStream."""

    def __init__(self, conn: NatsConnection, writer: DeadLetterWriter) -> None:
        self._conn = conn
        self._writer = writer
        self.listeners: builtins.list[ListenerPull] = []

    def listen(self, channel: str, consumer: str, handler: DeadLetterHandler) -> None:
        dlt = dead_letter_channel(channel)
        subscriber = self._conn.broker.subscriber(
            dlt,
            stream=self._conn.stream(dlt),
            durable=consumer,
            pull_sub=PullSub(batch_size=PULL_BATCH, timeout=LISTEN_FETCH_S),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.ACK,
            decoder=decode_raw,
            title=f"{dlt}:{consumer}",
            description=f"{consumer} reports every dead letter of {channel}.",
        )
        subscriber(dead_letter_endpoint(channel, handler))
        self.listeners.append(ListenerPull(self._conn, subscriber, dlt, consumer))

    def start(self) -> None:
        """Start the listeners' pull loops (each reads once FastStream started its subscriber)."""
        for listener in self.listeners:
            listener.start()

    async def list(self, channel: str, limit: int) -> builtins.list[DeadLetter]:
        psub, messages = await self._fetch_dlt(channel, limit, None)
        await psub.unsubscribe()
        return [await self._writer.resolve_body(dead_letter_of(m)) for m in messages]

    async def replay(self, channel: str, limit: int) -> builtins.list[DeadLetter]:
        psub, messages = await self._fetch_dlt(channel, limit, REPLAY_DURABLE)
        letters = []
        for m in messages:
            letter = await self._writer.resolve_body(dead_letter_of(m))
            headers = replay_headers(letter)
            # no headers of ours added: a body that fitted max_payload as first published fits again
            check_size(self._conn.nc, letter.body, headers)
            await self._conn.js.publish(letter.original_destination, letter.body, headers=headers or None)
            await m.ack()
            letters.append(letter)
        await psub.unsubscribe()
        return letters

    async def _fetch_dlt(self, channel: str, limit: int, durable: str | None) -> tuple[Any, builtins.list[Any]]:
        """Messages of `<channel>.DLT` stored before this call (and up to `limit`): a replay whose
        messages fail again must not pick up its own new dead letters. Later ones are nak'ed."""
        dlt = dead_letter_channel(channel)
        js, stream = self._conn.js, self._conn.stream(dlt).name
        try:
            last = (await js.stream_info(stream)).state.last_seq
        except NotFoundError:
            last = 0
        psub = await js.pull_subscribe(dlt, durable=durable, stream=stream)
        messages: builtins.list[Any] = []
        while last and len(messages) < limit:
            try:
                batch = await psub.fetch(min(limit - len(messages), 256), timeout=1.0)
            except TimeoutError:  # nats-py raises its own subclass or the builtin one
                break
            late = [m for m in batch if m.metadata.sequence.stream > last]
            messages.extend(m for m in batch if m.metadata.sequence.stream <= last)
            for m in late:
                await m.nak()
            if late:
                break
        return psub, messages
