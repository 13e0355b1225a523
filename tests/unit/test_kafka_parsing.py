"""brokers.kafka.parsing: records with binary header values reach the handlers, and the values
they carry on turn back into the original bytes."""

from __future__ import annotations

from typing import Any

from aiokafka.structs import ConsumerRecord

from brokers.kafka.parsing import header_bytes, lenient_parser

BINARY = bytes([0xFF, 0x00, 0xFE, 0x01])


def record(headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t", 0, 7, 0, 0, b"k", b"{}", None, 1, 2, headers)


class Parsed:
    def __init__(self, records: Any) -> None:
        batch = records if isinstance(records, tuple | list) else [records]
        self.headers = [{k: v.decode() for k, v in r.headers} for r in batch]  # strict, as FastStream's parser
        self.raw_message = records


async def strict(records: Any) -> Parsed:
    return Parsed(records)


async def test_binary_and_marker_like_values_are_shown_and_the_raw_records_kept() -> None:
    original = (record([("a", b"text"), ("b", BINARY), ("c", b"base64:looks-encoded")]),)
    parsed = await lenient_parser(original, strict)
    (headers,) = parsed.headers
    assert headers["a"] == "text"
    assert headers["b"].startswith("base64:")
    assert parsed.raw_message is original
    assert [header_bytes(headers[k]) for k in "abc"] == [b"text", BINARY, b"base64:looks-encoded"]


async def test_text_only_records_go_to_the_parser_untouched() -> None:
    single = record([("a", "naïve".encode())])
    parsed = await lenient_parser(single, strict)
    assert parsed.raw_message is single
    assert parsed.headers == [{"a": "naïve"}]
