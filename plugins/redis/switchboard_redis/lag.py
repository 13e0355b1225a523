"""Lag: entries of the channel the group has not read yet (XINFO GROUPS `lag`, Redis 7) plus the
ones it read and has not acknowledged (`pending`), plus its retries (scheduled or due)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from switchboard_redis.connection import Keys, RedisConnection, text

if TYPE_CHECKING:
    from switchboard_redis.consumer import RedisConsumer

UNKNOWN_LAG_SCAN = 10_000
"""When Redis cannot tell a group's lag (entries deleted mid-stream) the entries after its last
delivered id are counted, up to this many."""


class RedisLag:
    """`brokers.interface.Lag` on XINFO GROUPS."""

    def __init__(self, connection: RedisConnection, consumer: RedisConsumer) -> None:
        self._connection = connection
        self._consumer = consumer

    async def consumer_lag(self, channel: str, consumer: str) -> int | None:
        keys = Keys(channel, consumer)
        group = (await self._connection.groups(keys.stream)).get(consumer)
        if group is None:
            return None  # never subscribed
        waiting = await self._group_waiting(keys.stream, group)
        retry_group = (await self._connection.groups(keys.retry_stream)).get(consumer)
        if retry_group is not None:
            waiting += await self._group_waiting(keys.retry_stream, retry_group)
        waiting += int(await self._connection.client.zcard(keys.retry_due))
        return waiting

    async def _group_waiting(self, stream: str, info: dict[Any, Any]) -> int:
        pending = int(info.get("pending") or 0)
        lag = info.get("lag")
        if lag is None:
            after = "(" + text(info.get("last-delivered-id") or "0-0")
            lag = len(await self._connection.client.xrange(stream, after, "+", count=UNKNOWN_LAG_SCAN) or [])
        return int(lag) + pending

    def consuming(self) -> bool:
        return self._consumer.consuming()
