"""RabbitMQ node failover for a `BROKER_URL` that lists several nodes.

aio-pika's robust connection reconnects to the one URL it was given. `NodeFailover` picks the
first node that accepts a TCP connection at startup, and whenever the connection is lost it
points the connection at the next node that answers (`Connection.url`, which the robust
connection's next attempt reads), so a cluster keeps serving when the client's node dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

log = logging.getLogger("switchboard.rabbit")

PROBE_TIMEOUT_S = 0.5
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or DEFAULT_PORTS.get(parts.scheme, 5672)


def _answers(url: str) -> bool:
    try:
        with socket.create_connection(_address(url), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


async def _answers_async(url: str) -> bool:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            _, writer = await asyncio.open_connection(*_address(url))
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class NodeFailover:
    """The node list of one transport; `on_close` is a close callback of its connection."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.current = 0

    def initial(self) -> str:
        """The first node that answers now (the first of the list when none does: startup then
        fails with that node's error, or the robust connection keeps trying it)."""
        if len(self.urls) > 1:
            self.current = next((i for i, url in enumerate(self.urls) if _answers(url)), 0)
        return self.urls[self.current]

    async def on_close(self, connection: Any, exc: BaseException | None = None) -> None:
        """Point `connection` at the next node that answers, before it reconnects."""
        if len(self.urls) < 2 or exc is None or isinstance(exc, asyncio.CancelledError):
            return  # a deliberate close
        candidates = [(self.current + step) % len(self.urls) for step in range(1, len(self.urls) + 1)]
        for index in candidates:
            if await _answers_async(self.urls[index]):
                break
        else:
            index = candidates[0]
        if index != self.current:
            self.current = index
            connection.url = URL(self.urls[index])
            log.warning(
                "RabbitMQ connection lost (%s: %s); reconnecting to node %s", type(exc).__name__, exc, connection
            )
