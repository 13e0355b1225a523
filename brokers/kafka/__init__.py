"""Apache Kafka transport: non-blocking retry topics with partition pause/resume.

Native mapping of the shared policy:

* channel → topic of that name; the record key is the orderId (one order's events
  stay in one partition, in order). Producer `acks=all` + idempotence. Consumers take
  a `getmany` batch (FastStream batch subscriber) and commit explicit offsets only up to
  records that were handled (and their store transaction committed), retried or
  dead-lettered; a batch that fails as a whole is rewound (`seek`) and read again.
* retry → the record is copied to this consumer group's retry tier topic
  `<channel>.<consumer>.retry-<delay>ms` with `x-attempts` and `x-retry-due-at`
  headers, and the source offset is committed. The tier's subscriber (a group of
  its own, named like the tier, so it never rebalances the main group)
  pauses the partition until the head record is due (`pause` + `seek` +
  `call_later(resume)`), so a waiting retry blocks neither the main topic nor other
  partitions. One tier per distinct delay keeps every tier ordered by due time.
* dead letter → `<channel>.DLT` with the envelope plus `x-original-partition`,
  `x-original-offset` (of the first failed delivery).

Ordering trade-off: once a record moves to a retry topic, later records of the same
key are processed before it (as with Spring Kafka's non-blocking retries). The saga's
state machine tolerates out-of-order events; strict per-key ordering would need
blocking retries, which stall the whole partition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from brokers.interface import TransportParts
from brokers.kafka.channels import KafkaChannels
from brokers.kafka.connection import KafkaConnection
from brokers.kafka.consumer import KafkaConsumer
from brokers.kafka.dead_letters import KafkaDeadLetters
from brokers.kafka.lag import KafkaLag
from brokers.kafka.lifecycle import KafkaLifecycle
from brokers.kafka.publisher import KafkaPublisher

if TYPE_CHECKING:
    from brokers.interface import Engine, TransportContext

label = "kafka"
default_url = "localhost:9092"


def build(context: TransportContext, engine: Engine) -> TransportParts:
    """The Kafka parts around one shared `KafkaConnection`; nothing connects yet."""
    conn = KafkaConnection(context)
    channels = KafkaChannels(conn)
    return TransportParts(
        broker=conn.broker,
        lifecycle=KafkaLifecycle(conn, channels),
        channels=channels,
        publisher=KafkaPublisher(conn),
        consumer=KafkaConsumer(conn, engine),
        lag=KafkaLag(conn),
        dead_letters=KafkaDeadLetters(conn),
    )
