"""The project's own delivery metrics, identical names and labels on every broker.

FastStream's Prometheus middleware adds the `faststream_*` family beside these.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

LABELS = ("broker", "destination", "consumer")


class DeliveryMetrics:
    """Counters and gauges of one service process, labelled with its broker.

    `destination` is always the channel a consumer reads from (not the DLT), so the
    three series of one subscription share their label set.
    """

    def __init__(self, registry: CollectorRegistry, broker_label: str) -> None:
        self.registry = registry
        self.broker_label = broker_label
        self._retries = Counter(
            "retry_attempts", "Redeliveries scheduled after a handler failure.", LABELS, registry=registry
        )
        self._dead_letters = Counter(
            "dead_letter_topic_messages",
            "Messages sent to a dead-letter channel, by reason (exhausted | poison).",
            (*LABELS, "reason"),
            registry=registry,
        )
        self._join_failures = Counter(
            "consumer_group_join_failures",
            "Times a subscriber was found out of its consumer group or failed to rejoin it (Kafka).",
            LABELS,
            registry=registry,
        )
        self._lag = Gauge("consumer_lag_messages", "Messages waiting for this consumer.", LABELS, registry=registry)

    def retry_scheduled(self, channel: str, consumer: str) -> None:
        self._retries.labels(self.broker_label, channel, consumer).inc()

    def dead_lettered(self, channel: str, consumer: str, reason: str) -> None:
        self._dead_letters.labels(self.broker_label, channel, consumer, reason).inc()

    def join_failed(self, channel: str, consumer: str) -> None:
        self._join_failures.labels(self.broker_label, channel, consumer).inc()

    def set_lag(self, channel: str, consumer: str, waiting: int) -> None:
        self._lag.labels(self.broker_label, channel, consumer).set(waiting)

    def touch(self, channel: str, consumer: str) -> None:
        """Create the zero-valued series of a subscription so dashboards see it before any failure."""
        self._retries.labels(self.broker_label, channel, consumer)
        for reason in ("exhausted", "poison"):
            self._dead_letters.labels(self.broker_label, channel, consumer, reason)
