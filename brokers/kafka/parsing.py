"""Kafka records whose header values are not all text.

FastStream's Kafka parsers decode every header value as strict UTF-8, so one record with a binary
header (any foreign producer may send one) failed its whole batch before retries and dead-lettering
saw it. `lenient_parser` hands FastStream copies whose header values are in the lossless `shown`
form of `brokers.foreign_headers` (text as it is, other bytes `base64:<data>`), and keeps the
original records as the raw message; `header_bytes` turns a carried value back into its bytes, so
retries and dead letters carry the original header bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.structs import ConsumerRecord

from brokers.foreign_headers import BASE64_MARKER, shown, unshown

MARKER = BASE64_MARKER.encode()


async def lenient_parser(message: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
    """FastStream custom parser for single records and batches (a tuple of records; a list in
    FastStream's test broker)."""
    if isinstance(message, tuple | list):
        safe: Any = type(message)(_text_headers(record) for record in message)
        unchanged = all(a is b for a, b in zip(safe, message, strict=True))
    else:
        safe = _text_headers(message)
        unchanged = safe is message
    if unchanged:
        return await original(message)
    parsed = await original(safe)
    parsed.raw_message = message
    return parsed


def header_bytes(value: str) -> bytes:
    """The bytes of a header value as `lenient_parser` showed it (plain text: its UTF-8)."""
    return unshown(value) if value.startswith(BASE64_MARKER) else value.encode()


def _text_headers(record: ConsumerRecord[Any, Any]) -> ConsumerRecord[Any, Any]:
    if all(_plain_text(value) for _, value in record.headers):
        return record
    return dataclasses.replace(record, headers=[(name, shown(value).encode()) for name, value in record.headers])


def _plain_text(value: bytes) -> bool:
    """Text that `shown` leaves as it is (valid UTF-8, not starting with the base64 marker)."""
    if value.startswith(MARKER):
        return False
    if value.isascii():
        return True
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True
