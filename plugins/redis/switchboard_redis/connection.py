"""The Redis connection, the key layout and the entry layout every Switchboard client shares.

Entry layout (any Redis client can read and write it): one stream entry per message, field
`body` = the message bytes untouched, field `key` = the message key (optional), one field
`h:<name>` per header (UTF-8 text). Keys: see `Keys`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from brokers.model import dead_letter_channel

log = logging.getLogger("switchboard.redis")

BODY_FIELD = b"body"
KEY_FIELD = b"key"
HEADER_PREFIX = b"h:"
VISIBILITY_TIMEOUT_MS = 30_000
"""An entry delivered to a consumer that has not settled it for this long is claimed by another
(XAUTOCLAIM): the consumer is taken to have crashed."""
REPLAY_GROUP = "switchboard-dlt-replay"
MAX_CONNECTIONS = 64
"""Connections of one process (each read loop holds one while it blocks in XREADGROUP)."""
POOL_WAIT_S = 10.0
RETRIES = 3


@dataclass(frozen=True)
class Keys:
    """Every Redis key of one subscription (`channel`, consumer name `consumer`)."""

    channel: str
    consumer: str

    @property
    def stream(self) -> str:
        return self.channel

    @property
    def dead_letters(self) -> str:
        return dead_letter_channel(self.channel)

    @property
    def retry_stream(self) -> str:
        """Retry copies that fell due, read by the group `consumer` beside the channel."""
        return f"{self.channel}.retry.{self.consumer}"

    @property
    def retry_due(self) -> str:
        """Sorted set of scheduled retries: member = retry id, score = due time (epoch ms)."""
        return f"{self.channel}.retry.{self.consumer}.due"

    @property
    def retry_message_prefix(self) -> str:
        """`<prefix><retry id>` is a hash holding the retry copy's entry fields until it is due."""
        return f"{self.channel}.retry.{self.consumer}.msg:"


def entry_fields(body: bytes, key: str, headers: Mapping[str, Any]) -> dict[bytes, bytes]:
    """The fields of one stream entry (the documented layout)."""
    fields: dict[bytes, bytes] = {BODY_FIELD: body}
    if key:
        fields[KEY_FIELD] = key.encode()
    for name, value in headers.items():
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        fields[HEADER_PREFIX + str(name).encode()] = text.encode()
    return fields


@dataclass(frozen=True)
class Entry:
    """One stream entry, decoded."""

    stream: str
    id: str
    body: bytes
    headers: dict[str, str]
    key: bytes | None


def decode_entry(stream: str, entry_id: bytes | str, fields: Mapping[bytes, bytes] | None) -> Entry:
    fields = fields or {}
    headers = {
        k[len(HEADER_PREFIX) :].decode(errors="replace"): v.decode(errors="replace")
        for k, v in fields.items()
        if k.startswith(HEADER_PREFIX)
    }
    ident = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return Entry(stream, ident, bytes(fields.get(BODY_FIELD, b"")), headers, fields.get(KEY_FIELD))


def client_for(url: str, max_connections: int = MAX_CONNECTIONS) -> Redis:
    """A redis-py client whose commands wait for a free pooled connection (rather than fail) and
    are retried on a dropped connection (a restarted server)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    return Redis(connection_pool=pool)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisConnection:
    """The redis-py client of one transport (it connects lazily, on its first command)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: Redis = client_for(url)

    async def ensure_group(self, stream: str, group: str, *, start: str = "0") -> bool:
        """Create consumer group `group` on `stream` (and the stream) if missing; True if created.
        `start` "0": a group reads the stream from its first entry, so nothing published before
        the first subscriber started is lost."""
        try:
            await self.client.xgroup_create(stream, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def groups(self, stream: str) -> dict[str, dict[str, Any]]:
        """XINFO GROUPS by group name ({} when the stream does not exist)."""
        try:
            infos = await self.client.xinfo_groups(stream)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return {}
            raise
        return {text(info["name"]): info for info in infos}

    async def ping(self, within_s: float) -> bool:
        try:
            async with asyncio.timeout(within_s):
                return bool(await self.client.ping())
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def close(self) -> None:
        await self.client.aclose()


def stream_entries(replies: Any) -> list[Entry]:
    """The entries of an XREAD/XREADGROUP reply (RESP2 list or RESP3 map), stream by stream; an
    entry deleted after it was delivered (no fields) is left out."""
    if not replies:
        return []
    pairs = replies.items() if isinstance(replies, dict) else replies
    entries: list[Entry] = []
    for stream, items in pairs:
        if isinstance(replies, dict) and items and isinstance(items[0], list):
            items = items[0]
        entries.extend(decode_entry(text(stream), i, f) for i, f in items if f)
    return entries


def range_entries(stream: str, items: Any) -> list[Entry]:
    """The entries of an XRANGE reply."""
    return [decode_entry(stream, i, f) for i, f in items or []]
