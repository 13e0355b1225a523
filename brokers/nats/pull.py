"""Pull loops on JetStream durable consumers, handing what they read to FastStream's subscriber
(`consume`: its middlewares record metrics and spans and run the delivery policy). The subscriber
itself reads nothing (`internals.read_instead`); it starts and stops these loops' reading through
its `running` flag and its `subscription.unsubscribe()`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from nats.errors import ConnectionClosedError, OutboundBufferLimitError
from nats.js.api import DEFAULT_PREFIX, ConsumerConfig, DeliverPolicy
from nats.js.client import DEFAULT_JS_SUB_PENDING_BYTES_LIMIT, DEFAULT_JS_SUB_PENDING_MSGS_LIMIT
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from brokers.model import BATCH_MAX
from brokers.nats.internals import read_instead
from brokers.nats.wire import HEARTBEAT, NO_MESSAGES, release, status

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSubscription

    from brokers.nats.connection import NatsConnection

log = logging.getLogger("switchboard.nats")

ACK_WAIT_S = 30.0
IDLE_FETCH_S = 5.0
FILL_FETCH_S = 0.005
RECONNECT_WAIT_S = 0.5
PULL_BACKOFF_MAX_S = 5.0
"""Longest pause of a pull loop after failures in a row (each one doubles it from RECONNECT_WAIT_S)."""
STARTED_POLL_S = 0.01
"""How often a loop looks whether FastStream started its subscriber."""


async def back_off(failures: int) -> None:
    """Pause after the `failures`-th failed pull in a row: RECONNECT_WAIT_S, doubling up to PULL_BACKOFF_MAX_S."""
    await asyncio.sleep(min(RECONNECT_WAIT_S * 2 ** max(failures - 1, 0), PULL_BACKOFF_MAX_S))


class PullLoop:
    """A reading task tied to one FastStream subscriber: it starts once the subscriber runs (the
    broker started it), reads while it runs, and ends when FastStream unsubscribes it."""

    def __init__(self, conn: NatsConnection, subscriber: Any) -> None:
        self._conn = conn
        self.subscriber = subscriber
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        read_instead(subscriber, self)

    @property
    def running(self) -> bool:
        return bool(self.subscriber.running) and not self._stopped

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopped and not self.subscriber.running:  # noqa: ASYNC110 - FastStream has no start event
            await asyncio.sleep(STARTED_POLL_S)
        failures, opened = 0, False
        while self.running:  # a failure starts it again, as FastStream's task supervisor did
            try:
                if not opened:
                    await self.open()
                    opened = True
                await self.pull_loop()
            except Exception as exc:  # noqa: BLE001 - e.g. a stream not there yet
                failures += 1
                what = "pull loop failed" if opened else "pull consumer not ready"
                log.warning("JetStream %s, trying again: %s: %s", what, type(exc).__name__, exc)
                await back_off(failures)

    async def open(self) -> None:
        """Create the durable consumer if missing and what reads it."""

    async def pull_loop(self) -> None:
        """Read while `running`."""

    async def unsubscribe(self) -> None:
        """Stop reading for good (FastStream calls it when it stops the subscriber)."""
        self._stopped = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.close()

    async def close(self) -> None:
        """Release what `open` acquired."""


async def ensure_consumer(conn: NatsConnection, stream: str, config: ConsumerConfig) -> None:
    """Create the durable consumer `config.durable_name` on `stream` unless it exists (never
    altered), as `JetStreamContext.pull_subscribe` does."""
    js = conn.js
    try:
        await js.consumer_info(stream, str(config.durable_name))
    except NotFoundError:
        await js.add_consumer(stream, config=config)


def consumer_config(subject: str, durable: str, **settings: Any) -> ConsumerConfig:
    """The config FastStream's pull subscriber created consumers with."""
    return ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=subject,
        deliver_policy=DeliverPolicy.ALL,
        **settings,
    )


class PromptBatches(PullLoop):
    """A subscription's batches: what the stream holds *now*. Wait (one long pull) for the first
    message, then take what is already there (up to BATCH_MAX, waiting at most FILL_FETCH_S). While
    a batch is handled the next one is already asked for (one no-wait pull), so a backlog streams in
    without a pause between batches; what it brings waits in `queued` for the next round. Pull
    requests and replies go over the JetStream API subjects on an inbox of our own."""

    def __init__(self, conn: NatsConnection, subscriber: Any, channel: str, durable: str, max_deliver: int) -> None:
        super().__init__(conn, subscriber)
        self._channel, self._durable, self._max_deliver = channel, durable, max_deliver
        self.queued: collections.deque[Msg] = collections.deque()
        self._arrived = asyncio.Event()
        self._inbox = ""
        self._inbox_sub: NatsSubscription | None = None
        self._next = ""

    async def open(self) -> None:
        stream = self._conn.stream(self._channel).name
        config = consumer_config(self._channel, self._durable, max_deliver=self._max_deliver, ack_wait=ACK_WAIT_S)
        await ensure_consumer(self._conn, stream, config)
        nc = self._conn.nc
        self._inbox = nc.new_inbox()
        self._inbox_sub = await nc.subscribe(
            self._inbox,
            cb=self._arrive,
            pending_msgs_limit=DEFAULT_JS_SUB_PENDING_MSGS_LIMIT,
            pending_bytes_limit=DEFAULT_JS_SUB_PENDING_BYTES_LIMIT,
        )
        self._next = f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{self._durable}"

    async def close(self) -> None:
        inbox_sub, self._inbox_sub = self._inbox_sub, None
        if inbox_sub is not None:
            with contextlib.suppress(Exception):
                await inbox_sub.unsubscribe()

    async def _arrive(self, message: Msg) -> None:
        self.queued.append(message)
        self._arrived.set()

    async def pull_loop(self) -> None:
        failures = 0
        while self.running:
            messages = self.take(BATCH_MAX)
            if not messages:
                started = time.monotonic()
                try:
                    messages = await self._long_pull()
                except TimeoutError:  # nats-py raises its own subclass or the builtin one
                    # a timeout long before IDLE_FETCH_S is a pull that cannot be made: never spin on it
                    early = time.monotonic() - started < IDLE_FETCH_S / 2
                    failures = failures + 1 if early else 0
                    if early:
                        await back_off(failures)
                    continue
                except (ConnectionClosedError, ServiceUnavailableError):
                    failures += 1
                    await back_off(failures)  # unacked messages are redelivered by the server
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. a stream or consumer leader being elected
                    failures += 1
                    log.warning("JetStream pull failed, pulling again: %s: %s", type(exc).__name__, exc)
                    await back_off(failures)
                    continue
                failures = 0
            with contextlib.suppress(ConnectionClosedError, OutboundBufferLimitError):
                messages += await self._fill(BATCH_MAX - len(messages), FILL_FETCH_S)
                if self.running:
                    await self._request(BATCH_MAX, no_wait=True)
            if self.running:
                await self.subscriber.consume(messages)
            else:  # draining: the next consumer gets them now, not after ack_wait
                await release(messages)

    def take(self, most: int) -> list[Msg]:
        """The messages (not the status replies) among the first `most` entries queued."""
        taken = []
        queued = self.queued
        for _ in range(min(most, len(queued))):
            message = queued.popleft()
            if not status(message):
                taken.append(message)
        return taken

    async def _request(self, batch: int, *, no_wait: bool = False, expires_s: float | None = None) -> None:
        """Ask the server for up to `batch` messages; they and the closing status reply arrive in `queued`.
        no_wait: only what it holds now, then a `404` if there were fewer."""
        request: dict[str, Any] = {"batch": batch}
        if no_wait:
            request["no_wait"] = True
        if expires_s is not None:
            request["expires"] = int(expires_s * 1_000_000_000) - 100_000  # expires just before our wait ends
        await self._conn.nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)

    async def _next_reply(self, deadline: float) -> Msg | None:
        """The next entry queued, waiting until `deadline` (event-loop time) at most."""
        loop = asyncio.get_running_loop()
        while not self.queued:
            self._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                return None
        return self.queued.popleft()

    async def _long_pull(self) -> list[Msg]:
        """One message, waiting up to IDLE_FETCH_S for it (TimeoutError when none came); a pull the
        server refuses raises its error, as nats-py's `fetch` does."""
        await self._request(1, expires_s=IDLE_FETCH_S)
        deadline = asyncio.get_running_loop().time() + IDLE_FETCH_S
        while True:
            message = await self._next_reply(deadline)
            if message is None:
                raise TimeoutError
            code = status(message)
            if code in (HEARTBEAT, NO_MESSAGES):  # a 404 answers an earlier no-wait pull, never this one
                continue
            if code in ("408", "409"):  # expired, or a temporary conflict: as a timeout
                raise TimeoutError
            if code:
                APIError.from_msg(message)  # raises the status's error
            return [message]

    async def _fill(self, batch: int, timeout_s: float) -> list[Msg]:
        """What the stream holds for this consumer now, up to `batch` messages: one no-wait pull
        request, its messages taken from `queued` until the server says there are no more or
        `timeout_s` passes (nats-py's `fetch` costs a task and a timer per message)."""
        taken = self.take(batch)
        needed = batch - len(taken)
        if needed <= 0:
            return taken
        await self._request(needed, no_wait=True)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while needed > 0:
            message = await self._next_reply(deadline)
            if message is None:
                break
            code = status(message)
            if code == HEARTBEAT:
                continue
            if code:  # no more messages (404), request expired (408) or refused (409)
                break
            taken.append(message)
            needed -= 1
        return taken

    async def release_queued(self) -> None:
        """nak the messages waiting in `queued` (delivered after a fill returned); a stopped
        consumer would leave them to ack_wait."""
        await release(self.take(len(self.queued)))
