"""`services.http_limits.BoundedHttpToolsProtocol` on a fake transport: the request head cap
(431), the request timeout (408 / close), and ordinary requests untouched."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from services import http_limits
from services.http_limits import MAX_HEAD_BYTES, BoundedHttpToolsProtocol


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        assert not self.eof, "written after write_eof"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def echo_length(scope: dict[str, Any], receive: Any, send: Any) -> None:  # noqa: ARG001 - ASGI
    """Answers 200 with the number of body bytes it read."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def connect() -> tuple[BoundedHttpToolsProtocol, FakeTransport]:
    config = Config(app=echo_length, ws="none", lifespan="off", proxy_headers=False, log_level="warning")
    config.load()
    protocol = BoundedHttpToolsProtocol(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def head(*headers: bytes, method: bytes = b"GET", target: bytes = b"/x") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nHost: t\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


async def test_an_ordinary_request_is_answered() -> None:
    protocol, transport = connect()
    protocol.data_received(head())
    await settle()
    assert transport.written.startswith(b"HTTP/1.1 200 OK")
    assert not transport.closed
    protocol.connection_lost(None)


async def test_a_1_mb_header_gets_431_after_reading_at_most_64_kib_of_it() -> None:
    protocol, transport = connect()
    bomb = b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    for i in range(0, len(bomb), 65536):
        protocol.data_received(bomb[i : i + 65536])
    await settle()
    assert transport.written.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    assert transport.written.endswith(b'{"detail":"request header fields too large"}')
    assert transport.eof  # half-closed: the rest of what the client sends is read and dropped
    assert protocol._head_bytes <= MAX_HEAD_BYTES
    protocol.connection_lost(None)


async def test_one_header_line_over_16_kib_gets_431() -> None:
    protocol, transport = connect()
    protocol.data_received(head(b"X-Long: " + b"b" * (17 * 1024)))
    await settle()
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    protocol.connection_lost(None)


async def test_a_head_of_many_lines_under_64_kib_and_a_large_body_are_accepted() -> None:
    protocol, transport = connect()
    cookies = [b"X-Part-%d: " % i + b"c" * (12 * 1024) for i in range(4)]  # 48 KiB of headers
    body = b"d" * (200 * 1024)  # a body (in the same read) is not part of the head
    protocol.data_received(head(*cookies, b"Content-Length: %d" % len(body), method=b"POST") + body)
    await settle()
    assert transport.written.startswith(b"HTTP/1.1 200 OK")
    assert transport.written.endswith(b"%d" % len(body))
    protocol.connection_lost(None)


async def test_keep_alive_requests_each_get_their_own_head_budget() -> None:
    protocol, transport = connect()
    for _ in range(3):
        protocol.data_received(head(b"X-Part: " + b"e" * (15 * 1024)))
        await settle()
    assert transport.written.count(b"HTTP/1.1 200 OK") == 3
    protocol.connection_lost(None)


async def test_half_a_request_line_gets_408_and_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_limits, "REQUEST_TIMEOUT_S", 0.05)
    protocol, transport = connect()
    protocol.data_received(b"GET /hea")
    await asyncio.sleep(0.15)
    assert transport.written.startswith(b"HTTP/1.1 408 Request Timeout")
    assert transport.closed
    protocol.connection_lost(None)


async def test_a_connection_that_sends_nothing_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_limits, "REQUEST_TIMEOUT_S", 0.05)
    protocol, transport = connect()
    await asyncio.sleep(0.15)
    assert transport.closed
    assert transport.written == b""
    protocol.connection_lost(None)


async def test_a_body_that_stops_arriving_ends_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_limits, "REQUEST_TIMEOUT_S", 0.05)
    protocol, transport = connect()
    protocol.data_received(head(b"Content-Length: 100", method=b"POST") + b"only part")
    await asyncio.sleep(0.15)
    assert transport.written.startswith(b"HTTP/1.1 408 ")
    assert transport.closed
    protocol.connection_lost(None)


async def test_a_complete_request_is_not_timed_out_while_the_connection_is_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_limits, "REQUEST_TIMEOUT_S", 0.1)
    protocol, transport = connect()
    for _ in range(3):  # each request arrives well within its 0.1 s; together they take longer
        protocol.data_received(head())
        await asyncio.sleep(0.06)
    assert transport.written.count(b"HTTP/1.1 200 OK") == 3
    assert not transport.closed
    protocol.connection_lost(None)
