"""Publishing to JetStream: acknowledged publishes, deduplicated by the event id."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import TYPE_CHECKING, Any

from nats.js.api import Header
from nats.js.errors import APIError, NoStreamResponseError

from brokers.engine.publishing import confirmations
from brokers.model import DLT_SUFFIX, EVENT_ID_HEADER
from brokers.nats.wire import check_size, deduplicated

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from brokers.model import Outgoing
    from brokers.nats.connection import NatsConnection

PUBLISH_ACK_TIMEOUT_S = 10.0
"""How long `send_batch` waits for JetStream's acks. A send given up on may still be stored
(e.g. flushed after a reconnect); its re-send carries the same Nats-Msg-Id and is dropped."""
NO_RESPONDERS = "503"


def wire_headers(conn: NatsConnection, m: Outgoing) -> dict[str, str]:
    """The headers `send_batch` publishes `m` with."""
    headers = {"content-type": "application/json", "correlation_id": m.headers.get(EVENT_ID_HEADER, "")}
    # dead letters are never deduplicated (`DeadLetterWriter.publish`)
    headers.update(m.headers if m.channel.endswith(DLT_SUFFIX) else deduplicated(m.headers))
    headers[Header.EXPECTED_STREAM] = conn.stream(m.channel).name
    return headers


class NatsPublisher:
    """`brokers.interface.Publisher` for JetStream."""

    def __init__(self, conn: NatsConnection) -> None:
        self._conn = conn
        self._acked = AckedPublisher()

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        nc = self._conn.nc
        sends: list[Any] = []
        for m in messages:
            try:
                sends.append(await self._acked.publish(nc, m.channel, m.body, wire_headers(self._conn, m)))
            except Exception as exc:  # noqa: BLE001 - reported as this message's outcome
                sends.append(exc)
        return await confirmations(sends, PUBLISH_ACK_TIMEOUT_S)

    async def publish(self, message: Outgoing) -> None:
        """Through FastStream's publisher (it records the publish span)."""
        headers = message.headers
        check_size(self._conn.nc, message.body, headers)
        await self._conn.broker.publish(
            message.body,
            message.channel,
            headers=deduplicated(headers),
            stream=self._conn.stream(message.channel).name,
            correlation_id=headers.get(EVENT_ID_HEADER),
        )

    def destination_label(self, message: Outgoing) -> str:
        return message.channel


class AckedPublisher:
    """JetStream publishes acknowledged asynchronously on one inbox subscription, as nats-py's
    `publish_async` does, but with JetStream's refusals reported: `publish_async` raises them
    inside its reply callback, so its future never resolves and the sender waits out its
    timeout. `publish` returns a future that resolves when the stream stored the message, or
    fails with JetStream's error (`NoStreamResponseError` when no stream takes the subject,
    `BadRequestError` when another stream than the expected one does); a future cancelled by
    its waiter is forgotten, and an ack arriving for it later is ignored. Without
    `publish_async`'s semaphore and random token it also costs less CPU per publish."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._tokens = itertools.count()
        self._client: Client | None = None
        self._inbox = ""

    async def publish(self, nc: Client, subject: str, payload: bytes, headers: dict[str, str]) -> asyncio.Future[None]:
        if self._client is not nc:  # first publish on this connection (subscriptions survive reconnects)
            self._client, self._inbox = nc, nc.new_inbox() + "."
            try:
                await nc.subscribe(self._inbox + "*", cb=self._on_ack)
            except BaseException:
                self._client = None
                raise
        check_size(nc, payload, headers)
        token = str(next(self._tokens))
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[token] = stored
        try:
            await nc.publish(subject, payload, reply=self._inbox + token, headers=headers)
        except BaseException:
            del self._pending[token]
            raise
        stored.add_done_callback(lambda _: self._pending.pop(token, None))
        return stored

    async def _on_ack(self, msg: Msg) -> None:
        stored = self._pending.pop(msg.subject[len(self._inbox) :], None)
        if stored is None or stored.done():
            return
        if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS:
            stored.set_exception(NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
        except ValueError as exc:
            stored.set_exception(exc)
            return
        if "error" not in reply:
            stored.set_result(None)
            return
        try:
            APIError.from_error(reply["error"])  # raises the error's own class (nats-py's publish_async misses that)
        except Exception as exc:  # noqa: BLE001 - whatever it raises is this publish's outcome
            stored.set_exception(exc)
