"""NATS JetStream transport: durable pull consumers, max_deliver and nak-with-delay.

Native mapping of the shared policy:

* channel → subject of that name, kept in the JetStream stream named like the channel (dots
  become underscores); `<channel>.DLT` is kept in `<stream>-DLT`. Publishing waits for the
  JetStream ack; `Nats-Msg-Id` (the event id) lets the server drop duplicates that a retrying
  publisher sends within its window (`publisher`).
* consumers, retries and acks: `consumer`; the pull loops: `pull`.
* dead letter → publish to `<channel>.DLT` with the envelope, then ack the source; one that would
  exceed the server's `max_payload` (headers count) is fitted, its body possibly kept in the
  Object Store (`bodies`). No publish over `max_payload` is sent: the server would close the
  connection, which nats-py never reopens (should the server close it anyway, the service exits
  with CONNECTION_LOST_EXIT).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from brokers.interface import TransportParts
from brokers.nats.advisories import MaxDeliveriesExceeded
from brokers.nats.bodies import DeadLetterWriter
from brokers.nats.channels import NatsChannels
from brokers.nats.connection import (
    BODIES_BUCKET,
    CONNECTION_LOST_EXIT,
    NatsConnection,
    dlt_stream_of,
    stream_name,
    stream_of,
    user_password,
)
from brokers.nats.consumer import NatsConsumer
from brokers.nats.dead_letters import NatsDeadLetters
from brokers.nats.lag import NatsLag
from brokers.nats.lifecycle import NatsLifecycle
from brokers.nats.publisher import NatsPublisher
from brokers.nats.wire import check_size, wire_size

if TYPE_CHECKING:
    from brokers.interface import Engine, TransportContext

__all__ = [
    "BODIES_BUCKET",
    "CONNECTION_LOST_EXIT",
    "MaxDeliveriesExceeded",
    "build",
    "check_size",
    "default_url",
    "dlt_stream_of",
    "label",
    "stream_name",
    "stream_of",
    "user_password",
    "wire_size",
]

label = "nats"
default_url = "nats://localhost:4222"


def build(context: TransportContext, engine: Engine) -> TransportParts:
    conn = NatsConnection(context, engine)
    channels = NatsChannels(conn)
    writer = DeadLetterWriter(conn)
    consumer = NatsConsumer(conn, channels, writer)
    dead_letters = NatsDeadLetters(conn, writer)
    return TransportParts(
        broker=conn.broker,
        lifecycle=NatsLifecycle(conn, channels, consumer, dead_letters, writer),
        channels=channels,
        publisher=NatsPublisher(conn),
        consumer=consumer,
        lag=NatsLag(conn),
        dead_letters=dead_letters,
    )
