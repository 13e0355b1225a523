"""Dead-letter headers of other frameworks: lossless display, envelope mapping, replay filtering."""

from __future__ import annotations

import base64
import struct
from datetime import UTC, datetime
from typing import Any

import pytest

from brokers.foreign_headers import (
    BASE64_MARKER,
    amqp_value,
    application_headers,
    envelope,
    is_bookkeeping,
    shown,
    shown_headers,
    unshown,
)
from brokers.model import DeadLetter, replay_headers

# A record as Spring Kafka's DeadLetterPublishingRecoverer publishes it after non-blocking retries:
# ints and longs as Java writes them (big-endian), text as UTF-8.
SPRING_HEADERS: list[tuple[str, bytes]] = [
    ("kafka_dlt-original-topic", b"order-events"),
    ("kafka_dlt-original-partition", struct.pack(">i", 2)),
    ("kafka_dlt-original-offset", struct.pack(">q", 4_294_967_301)),
    ("kafka_dlt-original-timestamp", struct.pack(">q", 1_764_672_000_123)),
    ("kafka_dlt-original-timestamp-type", b"CreateTime"),
    ("kafka_dlt-original-consumer-group", b"inventory-group"),
    ("kafka_dlt-exception-fqcn", b"org.springframework.kafka.listener.ListenerExecutionFailedException"),
    ("kafka_dlt-exception-cause-fqcn", b"java.lang.IllegalStateException"),
    ("kafka_dlt-exception-message", "no stock for P123 – €".encode()),
    ("kafka_dlt-exception-stacktrace", b"java.lang.IllegalStateException: no stock\n\tat Foo.bar(Foo.java:1)"),
    ("retry_topic-attempts", struct.pack(">i", 4)),  # the next attempt: 3 were made
    ("retry_topic-backoff-timestamp", struct.pack(">q", 1_764_672_001_000)),
    ("retry_topic-original-timestamp", struct.pack(">q", 1_764_672_000_123)),
    ("kafka_deliveryAttempt", struct.pack(">i", 1)),
    ("__TypeId__", b"com.example.OrderEvent"),
    ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("x-tenant", b"\xff\x00\x01binary"),
]


def test_text_values_are_shown_as_text() -> None:
    assert shown(b"order-events") == "order-events"
    assert shown("caf\u00e9") == "café"
    assert shown("no stock – €".encode()) == "no stock – €"
    assert shown(b"line 1\n\tat Foo.java:1\r\n") == "line 1\n\tat Foo.java:1\r\n"


def test_valid_utf8_with_control_characters_is_text() -> None:
    assert shown(struct.pack(">i", 2)) == "\x00\x00\x00\x02"  # a Java int may be valid UTF-8
    assert unshown(shown("bell\x07")) == b"bell\x07"


def test_binary_values_are_shown_as_marked_base64_and_round_trip() -> None:
    offset = struct.pack(">q", 0x1_8000_0000)  # 0x80: not UTF-8
    assert shown(offset) == "base64:AAAAAYAAAAA="
    for raw in (offset, struct.pack(">i", 2), b"\xff\x00\x01binary", b"", b"\x80"):
        assert unshown(shown(raw)) == raw


def test_text_starting_with_the_marker_is_encoded_so_it_cannot_be_confused() -> None:
    text = b"base64:AAAAAg=="
    rendered = shown(text)
    assert rendered != "base64:AAAAAg=="
    assert rendered == BASE64_MARKER + base64.b64encode(text).decode()
    assert unshown(rendered) == text
    assert unshown(shown("base64:x")) == b"base64:x"


def test_amqp_values_keep_their_structure() -> None:
    when = datetime(2026, 12, 2, 10, 0, 4, tzinfo=UTC)
    value = [{"count": 2, "reason": "rejected", "routing-keys": ["k"], "time": when, "raw": b"\xfe"}]
    assert shown(value) == [
        {
            "count": 2,
            "reason": "rejected",
            "routing-keys": ["k"],
            "time": "2026-12-02T10:00:04.000Z",
            "raw": "base64:/g==",
        }
    ]
    assert shown(True) is True
    assert shown(7) == 7


def test_spring_kafka_headers_map_to_the_envelope() -> None:
    fields = envelope(dict(SPRING_HEADERS))
    assert fields == {
        "source": "spring-kafka",
        "originalDestination": "order-events",
        "originalPartition": 2,
        "originalOffset": 4_294_967_301,
        "originalTimestamp": "2025-12-02T10:40:00.123Z",
        "consumer": "inventory-group",
        "exceptionType": "org.springframework.kafka.listener.ListenerExecutionFailedException",
        "exceptionCauseType": "java.lang.IllegalStateException",
        "exceptionMessage": "no stock for P123 – €",
        "attempts": 3,
        "failedAt": None,
    }


def test_spring_attempts_of_early_versions_are_one_byte() -> None:
    assert envelope({"kafka_dlt-original-topic": b"t", "retry_topic-attempts": b"\x03"})["attempts"] == 2


def test_spring_without_retry_topics_counts_the_delivery_attempt() -> None:
    headers = {"kafka_dlt-original-topic": b"t", "kafka_deliveryAttempt": struct.pack(">i", 4)}
    assert envelope(headers)["attempts"] == 4


def test_our_headers_map_to_the_envelope_as_text() -> None:
    headers = {
        "x-original-destination": b"ns.order-events",
        "x-original-partition": b"1",
        "x-original-offset": b"1234",  # 4 bytes of digits: text, not a binary int
        "x-consumer": b"inventory-service",
        "x-exception-type": b"services.inventory.DemoFailure",
        "x-exception-message": b"boom",
        "x-attempts": b"3",
        "x-failed-at": b"2026-12-02T10:00:04.512Z",
        "kafka_dlt-original-topic": b"elsewhere",  # ours take precedence
    }
    fields = envelope(headers)
    assert fields["source"] == "switchboard"
    assert (fields["originalDestination"], fields["originalPartition"], fields["originalOffset"]) == (
        "ns.order-events",
        1,
        1234,
    )
    assert (fields["consumer"], fields["attempts"], fields["failedAt"]) == (
        "inventory-service",
        3,
        "2026-12-02T10:00:04.512Z",
    )


def test_rabbitmq_x_death_maps_to_the_envelope() -> None:
    when = datetime(2026, 12, 2, 10, 0, 4, tzinfo=UTC)
    death: dict[str, Any] = {
        "count": 1,
        "reason": "rejected",
        "queue": "ns.order-events.foreign",
        "time": when,
        "exchange": "ns.order-events",
        "routing-keys": ["OrderCreated"],
    }
    fields = envelope({"x-death": [death], "x-first-death-queue": "other", "x-first-death-reason": "expired"})
    assert fields["source"] == "rabbitmq"
    assert fields["originalDestination"] == "ns.order-events"
    assert fields["consumer"] == "ns.order-events.foreign"
    assert fields["exceptionType"] == "rejected"
    assert fields["attempts"] == 1
    assert fields["failedAt"] == "2026-12-02T10:00:04.000Z"
    # published through the default exchange: the routing key names the queue
    assert envelope({"x-death": [{**death, "exchange": ""}]})["originalDestination"] == "OrderCreated"


def test_rabbitmq_first_death_headers_without_x_death() -> None:
    fields = envelope({"x-first-death-queue": "q", "x-first-death-exchange": "ex", "x-first-death-reason": "expired"})
    assert (fields["source"], fields["originalDestination"], fields["consumer"], fields["exceptionType"]) == (
        "rabbitmq",
        "ex",
        "q",
        "expired",
    )


def test_no_known_headers_no_source() -> None:
    assert envelope({"traceparent": "x"})["source"] is None


@pytest.mark.parametrize(
    "name",
    [
        "x-original-destination",
        "x-original-partition",
        "x-consumer",
        "x-exception-type",
        "x-attempts",
        "x-failed-at",
        "x-retry-due-at",
        "x-body-ref",
        "x-envelope-ref",
        "event-id",
        "kafka_dlt-original-topic",
        "kafka_dlt-exception-stacktrace",
        "retry_topic-attempts",
        "retry_topic-backoff-timestamp",
        "kafka_deliveryAttempt",
        "x-death",
        "x-first-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
        "Nats-Msg-Id",
    ],
)
def test_bookkeeping_headers(name: str) -> None:
    assert is_bookkeeping(name)


@pytest.mark.parametrize("name", ["traceparent", "tracestate", "__TypeId__", "x-tenant", "event-type", "order-id"])
def test_application_headers(name: str) -> None:
    assert not is_bookkeeping(name)


def test_replay_keeps_application_headers_byte_for_byte_in_order() -> None:
    headers = [*SPRING_HEADERS, ("x-tenant", b"second")]
    assert application_headers(headers) == [
        ("__TypeId__", b"com.example.OrderEvent"),
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("x-tenant", b"\xff\x00\x01binary"),
        ("x-tenant", b"second"),
    ]


def test_dead_letter_listing_and_replay_of_a_spring_record() -> None:
    shown_values = shown_headers(SPRING_HEADERS)
    letter = DeadLetter(
        "ns.order-events.DLT", b'{"orderId":"1"}', {k: str(v) for k, v in shown_values.items()}, "0:5",
        tuple(SPRING_HEADERS), b"\xffkey",
    )  # fmt: skip
    listed = letter.as_dict()
    assert listed["key"] == "base64:/2tleQ=="
    assert listed["envelope"]["source"] == "spring-kafka"
    assert listed["headers"]["kafka_dlt-original-partition"] == "\x00\x00\x00\x02"
    assert listed["headers"]["kafka_dlt-original-timestamp"] == "base64:AAABmt6l0Hs="
    assert listed["headers"]["kafka_dlt-exception-message"] == "no stock for P123 – €"
    assert letter.original_destination == "order-events"
    assert set(replay_headers(letter)) == {"__TypeId__", "traceparent", "x-tenant"}


def test_our_application_x_headers_survive_replay() -> None:
    letter = DeadLetter(
        "c.DLT",
        b"{}",
        {"x-original-destination": "c", "x-attempts": "3", "x-tenant": "t1", "event-id": "e", "traceparent": "tp"},
    )
    assert replay_headers(letter) == {"x-tenant": "t1", "traceparent": "tp"}


def test_amqp_values_that_are_bytes_are_sent_again_as_byte_arrays() -> None:
    value = {"raw": b"\xfe\x01", "list": [b"\xff", "text", 3], "text": "t"}
    assert amqp_value(value) == {"raw": bytearray(b"\xfe\x01"), "list": [bytearray(b"\xff"), "text", 3], "text": "t"}
    assert isinstance(amqp_value(b"\xfe"), bytearray)
