"""What an HTTP client may send before a request reaches the app: uvicorn's protocol, bounded.

Every service is served by uvicorn with its httptools protocol (`uvicorn[standard]`), which
has no cap on the request head and no timeout before a request arrives: one 30 MB header is
buffered in full (and copied again on every read), and a client that sends half a request
line holds its connection, and the memory behind it, forever. `BoundedHttpToolsProtocol` is
that protocol plus two limits (docs/contract.md, "Limits"):

- a request head (request line and header fields) over `MAX_HEAD_BYTES` (64 KiB), or one
  header field over `MAX_HEADER_LINE_BYTES` (16 KiB), gets `431` and the connection closes:
  no more than 64 KiB of a head is ever buffered or parsed;
- a request must arrive completely, head and body, within `REQUEST_TIMEOUT_S` of its first
  byte (the first request of a connection: of the connection's opening), else the connection
  closes (with `408` if part of the request had arrived). Between requests uvicorn's
  `timeout_keep_alive` closes idle keep-alive connections.

`SERVER_OPTIONS` are the uvicorn options that select it (`Service` passes them to
`faststream run`, which hands them to `uvicorn.Config`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADER_LINE_BYTES = 16 * 1024
REQUEST_TIMEOUT_S = 10.0
KEEP_ALIVE_TIMEOUT_S = 5
LINGER_S = 2.0
"""After a 431 the server reads (and drops) what the client is still sending for this long
before it closes, so that a client still writing its head can read the answer (closing with
unread data makes the kernel reset the connection, which may discard the 431 on its way)."""


class _HeadTooLarge(Exception):
    pass


def _answer(status: bytes, detail: bytes) -> bytes:
    body = b'{"detail":"' + detail + b'"}'
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + body
    )


TOO_LARGE = _answer(b"431 Request Header Fields Too Large", b"request header fields too large")
TIMED_OUT = _answer(b"408 Request Timeout", b"request not received in time")


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head size cap and request timeout above."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # bytes received now belong to a request's head
        self._head_bytes = 0  # of the current head, fed to the parser so far
        self._head_too_large = False
        self._deadline: asyncio.TimerHandle | None = None  # request timeout, or the close after a 431
        self._discarding = False

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(REQUEST_TIMEOUT_S, self._request_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._deadline = self.loop.call_later(REQUEST_TIMEOUT_S, self._request_timed_out)
        while data:
            if not self._in_head:  # a body (and any request pipelined behind it: bounded by this read)
                self._feed(data)
                return
            room = MAX_HEAD_BYTES - self._head_bytes
            if room <= 0:
                self._refuse_head()
                return
            part, data = data[:room], data[room:]
            self._head_bytes += len(part)
            self._feed(part)
            if self._discarding or self.transport.is_closing():
                return

    # --- parser callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_HEADER_LINE_BYTES:
            self._head_too_large = True
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_deadline()  # the whole request is in: no timeout while the app answers
        self._in_head = True
        self._head_bytes = 0

    # --- internals ----------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        """uvicorn's `data_received`, with a 431 for a header field over the line limit."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._head_too_large:
                self._refuse_head()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _refuse_head(self) -> None:
        """431, then read and drop for LINGER_S (or until the client closes), then close."""
        self._cancel_deadline()
        self._discarding = True
        if self.transport.is_closing():
            return
        self.transport.write(TOO_LARGE)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._deadline = self.loop.call_later(LINGER_S, self.transport.close)

    def _request_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        in_app = cycle is not None and not cycle.response_complete
        if (in_app and not cycle.response_started) or (not in_app and self._in_head and self._head_bytes > 0):
            self.transport.write(TIMED_OUT)
        if in_app:  # its body is late: the app's receive() answers http.disconnect, its send() is dropped
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


SERVER_OPTIONS: dict[str, Any] = {
    "http": BoundedHttpToolsProtocol,
    "timeout_keep_alive": KEEP_ALIVE_TIMEOUT_S,
    "ws": "none",  # no service serves WebSockets: an Upgrade request is an ordinary request
    # the same head cap if the parser is switched to h11 (`--http h11`; then a 400, not a 431)
    "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
}
"""uvicorn options of every service (run options of `faststream run`)."""
