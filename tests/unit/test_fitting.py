"""The size rule of re-published copies (`brokers.fitting`), and RabbitMQ's use of it for its header frame."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from brokers import create_transport
from brokers.fitting import (
    CUT_MARK,
    FREE_TEXT_CAP,
    H_BODY_REF,
    H_BODY_SHA256,
    H_BODY_SIZE,
    H_TRIMMED,
    EnvelopeTooLarge,
    cut_text,
    fit,
)
from brokers.model import H_EXCEPTION_MESSAGE, H_EXCEPTION_TYPE, H_ORIGINAL_DESTINATION
from brokers.rabbit.consumer import RabbitConsumer
from brokers.rabbit.copies import FRAME_MAX, HEADER_FRAME_ALLOWANCE, header_table_size
from config import Settings

ENVELOPE = {H_ORIGINAL_DESTINATION, H_EXCEPTION_TYPE, H_EXCEPTION_MESSAGE}


def size(body: bytes, headers: Mapping[str, Any]) -> int:
    return len(body) + sum(len(k) + len(str(v)) + 4 for k, v in headers.items())


def envelope(message: str = "boom") -> dict[str, str]:
    return {H_ORIGINAL_DESTINATION: "order-events", H_EXCEPTION_TYPE: "ValueError", H_EXCEPTION_MESSAGE: message}


def test_a_copy_that_fits_is_left_as_it_is() -> None:
    headers = {**envelope("x" * 900), "traceparent": "00-abc"}
    fitted = fit(b"body", headers, limit=10_000, size=size, spill_name="ref")
    assert fitted.body == b"body"
    assert fitted.headers == headers
    assert fitted.spill is None
    assert H_TRIMMED not in fitted.headers


def test_free_text_is_cut_first_and_marked() -> None:
    headers = envelope("m" * 1000)
    body = b"b" * 1000
    limit = size(body, headers) - 500
    fitted = fit(body, headers, limit=limit, size=size, spill_name="ref")
    assert fitted.body == body
    assert fitted.spill is None
    message = fitted.headers[H_EXCEPTION_MESSAGE]
    assert len(message) == FREE_TEXT_CAP
    assert message.endswith(CUT_MARK)
    assert message.startswith("m" * 10)
    assert fitted.headers[H_TRIMMED] == "exception-text"
    assert size(fitted.body, fitted.headers) <= limit


def test_body_is_spilled_when_cutting_is_not_enough() -> None:
    body = bytes(range(256)) * 40
    headers = {**envelope("m" * 1000), "traceparent": "00-abc"}
    fitted = fit(body, headers, limit=len(body), size=size, spill_name="dlt/abc")
    assert fitted.body == b""
    assert fitted.spill == body
    assert fitted.headers[H_BODY_REF] == "dlt/abc"
    assert fitted.headers[H_BODY_SIZE] == str(len(body))
    assert fitted.headers[H_BODY_SHA256] == hashlib.sha256(body).hexdigest()
    assert fitted.headers["traceparent"] == "00-abc"
    assert fitted.headers[H_TRIMMED] == "exception-text,body-spilled"
    assert size(fitted.body, fitted.headers) <= len(body)


def test_a_short_message_is_not_cut_when_only_the_body_is_too_large() -> None:
    body = b"b" * 5000
    fitted = fit(body, envelope("short"), limit=4000, size=size, spill_name="ref")
    assert fitted.headers[H_EXCEPTION_MESSAGE] == "short"
    assert fitted.trimmed == ["body-spilled"]


def test_carried_headers_are_dropped_last() -> None:
    headers = {**envelope(), "big": "h" * 3000}
    fitted = fit(b"b" * 100, headers, limit=1000, size=size, envelope=ENVELOPE, spill_name="ref")
    assert "big" not in fitted.headers
    assert fitted.headers[H_ORIGINAL_DESTINATION] == "order-events"
    assert fitted.trimmed == ["body-spilled", "headers-dropped"]
    assert fitted.spill == b"b" * 100


def test_without_a_store_the_body_stays_and_headers_go() -> None:
    headers = {**envelope(), "big": "h" * 3000}
    fitted = fit(b"b" * 100, headers, limit=1000, size=size, envelope=ENVELOPE, spill_name=None)
    assert fitted.body == b"b" * 100
    assert fitted.spill is None
    assert fitted.trimmed == ["headers-dropped"]


def test_nothing_fits_is_an_error() -> None:
    with pytest.raises(EnvelopeTooLarge):
        fit(b"b" * 100, envelope(), limit=10, size=size, envelope=ENVELOPE, spill_name="ref")


def test_cut_text() -> None:
    assert cut_text("abc", 5) == "abc"
    assert cut_text("x" * 300) == "x" * (FREE_TEXT_CAP - len(CUT_MARK)) + CUT_MARK


def test_rabbit_copies_keep_their_headers_within_one_frame() -> None:
    transport = create_transport(Settings(broker="rabbit"), CollectorRegistry(), app_name="t")
    consumer = transport.parts.consumer
    assert isinstance(consumer, RabbitConsumer)
    ours = envelope("m" * 1000)
    small = {**ours, "traceparent": "00-abc"}
    assert consumer.fitted(dict(small), set(ours)) == small  # not connected: the default frame size
    big = {**ours, "big": "h" * (FRAME_MAX - 400)}
    fitted = consumer.fitted(big, set(ours))
    assert header_table_size(b"", fitted) <= FRAME_MAX - HEADER_FRAME_ALLOWANCE
    assert "big" not in fitted
    assert fitted[H_TRIMMED] == "exception-text,headers-dropped"
