"""JetStream's MAX_DELIVERIES advisories: messages the server stopped redelivering are dead-lettered."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from brokers.model import REASON_EXHAUSTED, dead_letter_headers
from brokers.nats.connection import stream_name

if TYPE_CHECKING:
    from brokers.model import Subscription
    from brokers.nats.bodies import DeadLetterWriter
    from brokers.nats.connection import NatsConnection

log = logging.getLogger("switchboard.nats")


class MaxDeliveriesExceeded(Exception):
    """JetStream delivered a message `max_deliver` times without an ack or a decision."""

    __module__ = "brokers.nats"  # its name in the `x-exception-type` header of the dead letters


async def watch_max_deliveries(conn: NatsConnection, writer: DeadLetterWriter, sub: Subscription) -> None:
    """Dead-letter messages the server gave up on without our code deciding (a process
    killed during every allowed delivery): JetStream announces them in an advisory.
    A queue group makes one instance of the consumer handle each advisory."""
    stream = stream_name(sub.channel)
    subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{sub.consumer}"

    async def on_advisory(advisory: Any) -> None:
        try:
            info = json.loads(advisory.data)
            stored = await conn.js.get_msg(stream, int(info["stream_seq"]))
            exc = MaxDeliveriesExceeded(f"JetStream stopped redelivering after {info.get('deliveries')} deliveries")
            headers = {
                **dict(stored.headers or {}),
                **dead_letter_headers(sub, exc, int(info.get("deliveries", 0))),
            }
            await writer.publish(sub, stored.data or b"", headers)
            conn.context.metrics.dead_lettered(sub.channel, sub.consumer, REASON_EXHAUSTED)
            log.error("dead-lettered %s seq %s for %s: %s", sub.channel, info.get("stream_seq"), sub.consumer, exc)
        except Exception:
            log.exception("could not dead-letter after a MAX_DELIVERIES advisory")

    await conn.nc.subscribe(subject, queue=f"{sub.consumer}-advisories", cb=on_advisory)
