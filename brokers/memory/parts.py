"""Publishing, channels, lag and the lifecycle of the memory transport (`brokers.interface` roles)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from brokers.provisioning import CREATED, EXISTS, WOULD_CREATE, Provisioned

if TYPE_CHECKING:
    from collections.abc import Sequence

    from brokers.memory.consuming import MemoryConsumer
    from brokers.memory.dead_letters import MemoryDeadLetters
    from brokers.memory.server import Server
    from brokers.model import Outgoing


class MemoryPublisher:
    """Appends to the channel log: durable (for the process's life) once the call returns."""

    def __init__(self, server: Server) -> None:
        self.server = server

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        for message in messages:
            self.server.log(message.channel).append(message.key, message.body, message.headers)
        return [None] * len(messages)

    async def publish(self, message: Outgoing) -> None:
        self.server.log(message.channel).append(message.key, message.body, message.headers)

    def destination_label(self, message: Outgoing) -> str:
        return message.channel


class MemoryChannels:
    """Channels exist once used; `provision` creates the declared ones' logs."""

    def __init__(self, server: Server, consumer: MemoryConsumer) -> None:
        self.server = server
        self.consumer = consumer
        self.published: dict[str, str] = {}

    def declare_publisher(self, channel: str, schema: Any, description: str) -> None:  # noqa: ARG002
        self.published[channel] = description

    async def provision(self, *, dry_run: bool = False) -> list[Provisioned]:
        wanted = dict.fromkeys([*self.published, *(r.sub.channel for r in self.consumer.readers)])
        outcomes = []
        for channel in wanted:
            if channel in self.server.logs:
                outcomes.append(Provisioned("channel", channel, EXISTS))
            elif dry_run:
                outcomes.append(Provisioned("channel", channel, WOULD_CREATE))
            else:
                self.server.log(channel)
                outcomes.append(Provisioned("channel", channel, CREATED))
        return outcomes


class MemoryLag:
    """Lag = log records a consumer name has not settled; None for a name that never subscribed."""

    def __init__(self, server: Server) -> None:
        self.server = server

    async def consumer_lag(self, channel: str, consumer: str) -> int | None:
        group = self.server.groups.get((channel, consumer))
        return None if group is None else group.lag()

    def consuming(self) -> bool:
        return True


class MemoryLifecycle:
    """`start` runs the readers and DLT listeners; `stop` without a drain first is a crash: the
    readers stop at once and whatever they had not settled is read again by the next reader."""

    def __init__(self, consumer: MemoryConsumer, dead_letters: MemoryDeadLetters) -> None:
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.connected = False

    async def connect(self) -> None:
        self.connected = True

    async def start(self) -> None:
        self.consumer.start()
        self.dead_letters.start()

    async def stop(self) -> None:
        self.consumer.abandon()
        self.dead_letters.stop()
        self.connected = False

    async def ping(self, within_s: float) -> bool:  # noqa: ARG002
        return self.connected
