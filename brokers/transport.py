"""`Transport`: one broker's parts (brokers.interface) composed with the shared engine.

This is what services use; it holds no broker knowledge. The contract it keeps is the one in
`brokers.interface`, proven for every registered transport by `tests/transport/`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from brokers.engine.delivery import DeliveryEngine
from brokers.engine.publishing import Publishing
from brokers.engine.readiness import LagReporter
from brokers.model import Outgoing

if TYPE_CHECKING:
    from collections.abc import Sequence

    from brokers.interface import DeadLetterHandler, TransportContext, TransportPlugin
    from brokers.model import DeadLetter, Subscription
    from brokers.provisioning import Provisioned


class _EngineHandle:
    """The `brokers.interface.Engine` a plugin's parts are built with (late-bound: the parts are
    built before the publishing that needs their publisher)."""

    def __init__(self, delivery: DeliveryEngine) -> None:
        self.delivery = delivery
        self.publishing: Publishing | None = None

    async def publish_one(self, message: Outgoing) -> None:
        assert self.publishing is not None, "publishing is bound when the transport is built"
        await self.publishing.publish_one(message)

    async def settled(self) -> None:
        await self.delivery.settled()


class Transport:
    """A broker behind the delivery contract (`brokers.interface`)."""

    def __init__(self, plugin: TransportPlugin, context: TransportContext) -> None:
        self.label = plugin.label
        self.url = context.url
        self.policy = context.policy
        self.metrics = context.metrics
        self._delivery = DeliveryEngine(plugin.label, context.policy, context.metrics, context.observability)
        engine = _EngineHandle(self._delivery)
        self.parts = plugin.build(context, engine)
        self._delivery.bind(self.parts.consumer)
        self._publishing = engine.publishing = Publishing(self.parts.publisher, plugin.label, context.observability)
        self._lag = LagReporter(self.parts.lag, context.metrics)

    @property
    def broker(self) -> Any:
        """The FastStream broker the service app runs (None: the transport runs its own consumers)."""
        return self.parts.broker

    @property
    def subscriptions(self) -> list[Subscription]:
        return self._lag.subscriptions

    @property
    def lag_watch(self) -> list[tuple[str, str]]:
        """(channel, consumer) pairs whose lag this transport reports."""
        return list(self._lag.watched)

    # --- wiring (before start) -------------------------------------------------------
    def subscribe(self, sub: Subscription) -> None:
        """Deliver `sub.channel`'s messages to `sub.handler` under the failure policy."""
        self._lag.subscribed(sub)
        self.parts.consumer.subscribe(sub, self._delivery.pipeline(sub))

    def watch_lag(self, channel: str, consumer: str) -> None:
        """Report `consumer_lag_messages` for `consumer` on `channel`, even if another process consumes."""
        self._lag.watch(channel, consumer)

    def listen_dead_letters(self, channel: str, consumer: str, handler: DeadLetterHandler) -> None:
        self.parts.dead_letters.listen(channel, consumer, handler)

    def declare_publisher(self, channel: str, schema: Any, description: str) -> None:
        self.parts.channels.declare_publisher(channel, schema, description)

    # --- publishing ------------------------------------------------------------------
    async def publish(self, channel: str, body: bytes, *, key: str, headers: dict[str, str]) -> None:
        """Publish raw bytes durably; returns once the broker confirmed them."""
        await self.publish_one(Outgoing(channel, body, key, headers))

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        return await self._publishing.publish_batch(messages)

    async def publish_one(self, message: Outgoing) -> None:
        await self._publishing.publish_one(message)

    # --- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        await self.parts.lifecycle.connect()

    async def start_extras(self) -> None:
        """After connecting: provisioning (when enabled) and the broker's watchers."""
        await self.parts.lifecycle.start()

    async def drain(self) -> None:
        """Stop reading, then wait until the running batches are handled and settled. Call before
        the broker stops: settling needs the connection."""
        self._delivery.draining = True
        await self.parts.consumer.drain(self._delivery.settled)

    async def settled(self) -> None:
        """Return once every batch handed to the handlers so far is handled and settled."""
        await self._delivery.settled()

    async def stop_extras(self) -> None:
        await self.parts.lifecycle.stop()

    async def close(self) -> None:
        """For tools that run no service app: release the extras, then the broker connection."""
        await self.stop_extras()
        if self.broker is not None:
            await self.broker.stop()

    async def start(self) -> None:
        """Run without a service app: connect, start the extras, then the FastStream broker's
        subscribers when there is one (a transport without runs its readers from `start_extras`)."""
        await self.connect()
        await self.start_extras()
        if self.broker is not None:
            await self.broker.start()

    async def stop(self) -> None:
        """Stop gracefully what `start` started: drain (settle what was handled), then close."""
        await self.drain()
        await self.close()

    async def provision(self, *, dry_run: bool = False) -> list[Provisioned]:
        return await self.parts.channels.provision(dry_run=dry_run)

    # --- health and lag --------------------------------------------------------------
    async def ping(self, within_s: float = 2.0) -> bool:
        return await self.parts.lifecycle.ping(within_s)

    async def consumer_lag(self, channel: str, consumer: str) -> int | None:
        return await self.parts.lag.consumer_lag(channel, consumer)

    async def consumed_channels_available(self, within_s: float) -> bool:
        return await self._lag.consumed_channels_available(within_s)

    async def refresh_lag(self) -> None:
        await self._lag.refresh()

    # --- dead letters ----------------------------------------------------------------
    async def list_dead_letters(self, channel: str, limit: int) -> list[DeadLetter]:
        return await self.parts.dead_letters.list(channel, limit)

    async def replay_dead_letters(self, channel: str, limit: int) -> list[DeadLetter]:
        return await self.parts.dead_letters.replay(channel, limit)
