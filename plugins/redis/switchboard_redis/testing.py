"""The contract suite's foreign client for Redis (entry point `switchboard.test_clients:redis`):
plain redis-py on the documented entry layout (fields `body`, `key`, `h:<name>`), no project code.

Only the test suite loads this module (through the entry point), from the repository root where
`tests.support.raw` is importable; the transport itself never imports it."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError

from tests.support.raw import RawClient, RawMessage

PAGE = 1000


class RedisRaw(RawClient):
    """`tests.support.raw.RawClient` for Redis Streams."""

    name = "redis"
    DEFAULT_URL = "redis://localhost:6379"

    def __init__(self, url: str | None = None) -> None:
        super().__init__(url)
        pool = BlockingConnectionPool.from_url(
            self.url, max_connections=64, retry=Retry(ExponentialBackoff(), 5), retry_on_error=[ConnectionError]
        )
        self.client: Redis = Redis(connection_pool=pool)

    async def connect(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()

    async def publish(self, channel: str, body: bytes, key: str | None = None) -> None:
        fields: dict[Any, Any] = {b"body": body}
        if key:
            fields[b"key"] = key.encode()
        await self.client.xadd(channel, fields)

    async def tap(self, channel: str) -> Any:
        """The channel and its last entry id now: `tapped` reads what comes after."""
        last: Any = await self.client.xrevrange(channel, "+", "-", count=1)
        return channel, (_text(last[0][0]) if last else "0-0")

    async def tapped(self, token: Any) -> list[RawMessage]:
        channel, after = token
        return await self._read(channel, "(" + after)

    async def dead_letters(self, channel: str) -> list[RawMessage]:
        return await self._read(channel + ".DLT", "-")

    async def _read(self, stream: str, start: str) -> list[RawMessage]:
        out: list[RawMessage] = []
        while True:
            items: Any = await self.client.xrange(stream, start, "+", count=PAGE) or []
            out.extend(_raw(fields) for _, fields in items)
            if len(items) < PAGE:
                return out
            start = "(" + _text(items[-1][0])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _raw(fields: dict[bytes, bytes]) -> RawMessage:
    """A stream entry of the layout as the suite's message."""
    headers = {k[2:].decode(): v.decode(errors="replace") for k, v in fields.items() if k.startswith(b"h:")}
    return RawMessage(bytes(fields.get(b"body", b"")), headers, fields.get(b"key"))
