"""Broker objects: the streams a service publishes, consumes and dead-letters to, and the
consumer groups it reads with; AsyncAPI documentation through the FastStream RedisBroker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from brokers.model import dead_letter_channel
from brokers.provisioning import CREATED, EXISTS, FAILED, WOULD_CREATE, Provisioned
from switchboard_redis.connection import RedisConnection

if TYPE_CHECKING:
    from faststream.redis import RedisBroker

    from switchboard_redis.consumer import RedisConsumer
    from switchboard_redis.dead_letters import RedisDeadLetters

PROVISION_GROUP = "switchboard-provision"
"""A group created with MKSTREAM and destroyed at once: how an empty stream is made."""


class RedisChannels:
    """`brokers.interface.Channels`: streams by name, groups by (stream, consumer)."""

    def __init__(
        self, connection: RedisConnection, broker: RedisBroker, consumer: RedisConsumer, dead_letters: RedisDeadLetters
    ) -> None:
        self._connection = connection
        self._broker = broker
        self._consumer = consumer
        self._dead_letters = dead_letters
        self._documented: set[str] = set()
        self.published: list[str] = []

    def declare_publisher(self, channel: str, schema: Any, description: str) -> None:
        if channel not in self.published:
            self.published.append(channel)
        self.document(channel, schema, description)

    def document(self, stream: str, schema: Any, description: str) -> None:
        """An AsyncAPI channel for `stream` (a FastStream publisher: it only documents)."""
        if stream not in self._documented:
            self._documented.add(stream)
            self._broker.publisher(stream=stream, title=stream, description=description, schema=schema)

    def streams(self) -> list[str]:
        """Every stream this service uses, in a stable order."""
        names = list(self.published)
        for reader in self._consumer.readers.values():
            names += [reader.keys.stream, reader.keys.retry_stream, reader.keys.dead_letters]
        names += [dlt for dlt, _, _ in self._dead_letters.listeners]
        return list(dict.fromkeys(names))

    def groups(self) -> list[tuple[str, str]]:
        pairs = [(r.keys.stream, r.keys.consumer) for r in self._consumer.readers.values()]
        pairs += [(r.keys.retry_stream, r.keys.consumer) for r in self._consumer.readers.values()]
        pairs += [(dlt, consumer) for dlt, consumer, _ in self._dead_letters.listeners]
        return pairs

    async def provision(self, *, dry_run: bool = False) -> list[Provisioned]:
        """Create the missing streams (empty) and consumer groups (reading from the first entry);
        Redis streams have no settings to compare."""
        outcomes = [await self._stream(name, dry_run=dry_run) for name in self.streams()]
        for stream, group in self.groups():
            outcomes.append(await self._group(stream, group, dry_run=dry_run))
        return outcomes

    async def _stream(self, name: str, *, dry_run: bool) -> Provisioned:
        client = self._connection.client
        try:
            if await client.exists(name):
                kind = await client.type(name)
                if kind not in (b"stream", "stream"):
                    return Provisioned("stream", name, FAILED, f"the key holds a {kind!r}, not a stream")
                return Provisioned("stream", name, EXISTS)
            if dry_run:
                return Provisioned("stream", name, WOULD_CREATE)
            await client.xgroup_create(name, PROVISION_GROUP, id="$", mkstream=True)
            await client.xgroup_destroy(name, PROVISION_GROUP)
        except ResponseError as exc:
            return Provisioned("stream", name, FAILED, str(exc))
        return Provisioned("stream", name, CREATED)

    async def _group(self, stream: str, group: str, *, dry_run: bool) -> Provisioned:
        name = f"{stream}/{group}"
        if group in await self._connection.groups(stream):
            return Provisioned("consumer group", name, EXISTS)
        if dry_run:
            return Provisioned("consumer group", name, WOULD_CREATE, "reading from the first entry")
        try:
            await self._connection.ensure_group(stream, group)
        except ResponseError as exc:
            return Provisioned("consumer group", name, FAILED, str(exc))
        return Provisioned("consumer group", name, CREATED, "reading from the first entry")


def dead_letter_description(channel: str) -> str:
    return f"Dead letters of {channel}: original bytes plus x-* envelope headers."


__all__ = ["RedisChannels", "dead_letter_channel", "dead_letter_description"]
