"""Dead letters on `<channel>.DLT`, fitted to `max_payload`; bodies that do not fit are kept in the
Object Store bucket `<namespace>-dead-letter-bodies` (`brokers.fitting`, step 2)."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from nats.js.api import ObjectStoreConfig
from nats.js.errors import BucketNotFoundError

from brokers.fitting import H_BODY_REF, H_BODY_SHA256, fit
from brokers.model import DeadLetter, Outgoing, dead_letter_headers
from brokers.nats.publisher import wire_headers
from brokers.nats.wire import carried, wire_size

if TYPE_CHECKING:
    from brokers.model import Subscription
    from brokers.nats.connection import NatsConnection

log = logging.getLogger("switchboard.nats")


class DeadLetterWriter:
    """Publishes dead letters and keeps or restores the bodies set apart."""

    def __init__(self, conn: NatsConnection) -> None:
        self._conn = conn

    async def publish(self, sub: Subscription, body: bytes, headers: dict[str, Any]) -> None:
        """Dead letters carry no `Nats-Msg-Id`: an event dead-lettered again after a replay is
        a new dead letter, which the DLT stream's duplicate window would drop. A copy that would
        exceed the server's `max_payload` is fitted (`brokers.fitting`); a spilled body is stored
        in the Object Store bucket before the dead letter that references it is published."""
        conn = self._conn
        dlt = sub.dead_letter_channel

        def size(b: bytes, h: Any) -> int:
            return wire_size(b, wire_headers(conn, Outgoing(dlt, b, "", h)))

        fitted = fit(
            body,
            carried(headers),
            limit=conn.nc.max_payload,
            size=size,
            envelope=set(dead_letter_headers(sub, Exception(), 0)),
            spill_name=f"{dlt}/{hashlib.sha256(body).hexdigest()}",
        )
        if fitted.spill is not None:
            await self.keep_body(fitted.headers[H_BODY_REF], fitted.spill)
            log.warning(
                "dead letter of %s too large for max_payload with its envelope (%d bytes): body kept in bucket %s as %s",
                sub.channel,
                len(body),
                conn.bodies_bucket,
                fitted.headers[H_BODY_REF],
            )
        await conn.engine.publish_one(Outgoing(dlt, fitted.body, "", fitted.headers))

    async def keep_body(self, name: str, body: bytes) -> None:
        """Store `body` as object `name` (content-addressed: a repeated store replaces it with the same bytes)."""
        js, bucket = self._conn.js, self._conn.bodies_bucket
        try:
            store = await js.object_store(bucket)
        except BucketNotFoundError:  # not provisioned (PROVISION off): created as provisioning would
            store = await js.create_object_store(bucket, ObjectStoreConfig(replicas=self._conn.replicas))
        await store.put(name, body)

    async def resolve_body(self, letter: DeadLetter) -> DeadLetter:
        """`letter` with a body kept in the bucket put back, checked against `x-body-sha256`."""
        name = letter.headers.get(H_BODY_REF)
        if not name:
            return letter
        store = await self._conn.js.object_store(self._conn.bodies_bucket)
        body = (await store.get(name)).data or b""
        if hashlib.sha256(body).hexdigest() != letter.headers.get(H_BODY_SHA256):
            raise ValueError(f"dead-letter body {name} does not match its x-body-sha256")
        letter.body = body
        return letter
