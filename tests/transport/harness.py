"""What the conformance cases share: transports under test built like a service builds them,
unique channels, a recording handler and polling with a deadline (never a sleep for an effect)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from brokers import Outgoing, Subscription, Transport, create_transport
from brokers.registry import load
from config import Settings

DEADLINE_S = 60.0
"""Longest any effect is waited for (a Kafka group join or a JetStream redelivery takes seconds)."""
STOP_TIMEOUT_S = 30.0
APP_HEADERS = {"app-header": "kept"}
"""An application header every test message carries: dead letters and replays keep it."""


class Ping(BaseModel):
    """The test event."""

    n: int
    key: str


def ping(n: int, key: str = "k") -> bytes:
    return json.dumps({"n": n, "key": key}).encode()


def capabilities(name: str) -> frozenset[str]:
    """The plugin's flags (`brokers.interface.TransportPlugin`); None declared: every flag."""
    flags = getattr(load(name), "capabilities", None)
    return ALL_FLAGS if flags is None else frozenset(flags)


ALL_FLAGS = frozenset({"survives-process-restart", "reads-from-beginning"})
"""The known capability flags (documented in `brokers.interface.TransportPlugin`)."""


async def eventually(check: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    """Poll `check` (sync or async) until it returns a truthy value; fail after `deadline_s`."""
    end = time.monotonic() + deadline_s
    last: Any = None
    while True:
        last = check()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s:.0f} s: {what} (last: {last!r})")
        await asyncio.sleep(0.05)


@dataclass
class Recorder:
    """A handler that records each event it is given (with the monotonic time), optionally failing
    or blocking through `behaviour` (an async callable run before the event counts as handled)."""

    behaviour: Callable[[Ping], Awaitable[None]] | None = None
    received: list[tuple[float, Ping]] = field(default_factory=list)
    handled: list[Ping] = field(default_factory=list)

    async def __call__(self, event: Ping) -> None:
        self.received.append((time.monotonic(), event))
        if self.behaviour is not None:
            await self.behaviour(event)
        self.handled.append(event)

    def handled_ns(self) -> list[int]:
        return [e.n for e in self.handled]

    def received_ns(self) -> list[int]:
        return [e.n for _, e in self.received]


class Harness:
    """One test's transports of one kind, unique channels, and their stop at the end."""

    def __init__(self, name: str, namespace: str | None = None) -> None:
        self.name = name
        self.capabilities = capabilities(name)
        self.namespace = namespace or f"conf-{uuid.uuid4().hex[:12]}"
        self.channels: list[str] = []
        self.started: list[Transport] = []
        self.gates: list[asyncio.Event] = []

    def channel(self, name: str = "orders") -> str:
        """A channel of this test; the transports built after this call declare they publish it."""
        channel = f"{self.namespace}.{name}"
        self.channels.append(channel)
        return channel

    def consumer(self, name: str = "svc") -> str:
        return f"{name}-{uuid.uuid4().hex[:8]}"

    def transport(
        self, *, retry_delay_ms: int = 100, max_attempts: int = 3, multiplier: float = 1.0, spans: bool = False
    ) -> tuple[Transport, CollectorRegistry]:
        """A transport built as a service builds it (`create_transport`), with its own registry;
        `spans`: with a tracer provider, as when OTEL_EXPORTER_OTLP_ENDPOINT is set (every publish
        then takes the path that records publish spans)."""
        settings = Settings(
            broker=self.name,
            broker_url=None,
            channel_namespace=self.namespace,
            retry_delay_ms=retry_delay_ms,
            retry_max_attempts=max_attempts,
            retry_backoff_multiplier=multiplier,
        )
        registry = CollectorRegistry()
        tracer = TracerProvider() if spans else None
        t = create_transport(settings, registry, app_name=f"conformance-{self.name}", tracer_provider=tracer)
        for channel in self.channels:  # as a service declares what it publishes (provisioned on start)
            t.declare_publisher(channel, Ping, "conformance test events")
        return t, registry

    def subscribe(self, t: Transport, channel: str, consumer: str, handler: Recorder) -> Subscription:
        sub = Subscription(channel, consumer, handler, Ping, "conformance test events")
        t.subscribe(sub)
        return sub

    async def start(self, t: Transport) -> Transport:
        """Start as the service app does (connect, extras, the FastStream broker if any)."""
        self.started.append(t)
        await t.start()
        return t

    async def stop(self, t: Transport) -> None:
        """Graceful stop: drain (settle what was handled), then close."""
        self.started.remove(t)
        await asyncio.wait_for(t.stop(), STOP_TIMEOUT_S)

    async def crash(self, t: Transport) -> None:
        """Drop the connection without draining: nothing unsettled is acknowledged."""
        self.started.remove(t)
        await asyncio.wait_for(t.close(), STOP_TIMEOUT_S)

    def gate(self) -> asyncio.Event:
        """An event released at teardown (a blocked handler of a crashed transport ends then)."""
        event = asyncio.Event()
        self.gates.append(event)
        return event

    async def publish(self, t: Transport, channel: str, bodies: list[tuple[bytes, str]]) -> None:
        messages = [
            Outgoing(channel, body, key, {"event-id": str(uuid.uuid4()), **APP_HEADERS}) for body, key in bodies
        ]
        outcomes = await t.publish_batch(messages)
        assert outcomes == [None] * len(messages), outcomes

    async def aclose(self) -> None:
        for t in reversed(self.started):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t.stop(), STOP_TIMEOUT_S)
        for gate in self.gates:
            gate.set()
        self.started.clear()
