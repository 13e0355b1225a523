"""The in-memory transport: the whole delivery contract (`brokers.interface`) inside one process,
without FastStream (`TransportParts.broker` is None: the transport runs its own readers).

For tests and single-process demos only: nothing survives the process. The "server" state
(`brokers.memory.server`) is kept per URL (`memory://<name>`), so transports built with the
same URL share channels, consumer groups and dead letters; a transport stopped without a drain
(a crash) leaves its unsettled messages to the next transport of the same consumer name.

Channels are append-only logs; each consumer name has one committed offset per channel
(several subscriptions of one name share the work, each key's messages in order); retries wait
for their due time on the server; dead letters go to `<channel>.DLT` with the envelope headers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from brokers.interface import TransportParts
from brokers.memory.consuming import MemoryConsumer
from brokers.memory.dead_letters import MemoryDeadLetters
from brokers.memory.parts import MemoryChannels, MemoryLag, MemoryLifecycle, MemoryPublisher
from brokers.memory.server import server

if TYPE_CHECKING:
    from brokers.interface import Engine, TransportContext

label = "memory"
default_url = "memory://default"
capabilities: frozenset[str] = frozenset({"reads-from-beginning"})
"""Flags of `brokers.interface.TransportPlugin`: a log read from its beginning; nothing survives the process."""


def build(context: TransportContext, engine: Engine) -> TransportParts:  # noqa: ARG001
    """The parts sharing the server of `context.url`; nothing runs before `Lifecycle.start`."""
    state = server(context.url)
    consumer = MemoryConsumer(state)
    dead_letters = MemoryDeadLetters(state)
    return TransportParts(
        broker=None,
        lifecycle=MemoryLifecycle(consumer, dead_letters),
        channels=MemoryChannels(state, consumer),
        publisher=MemoryPublisher(state),
        consumer=consumer,
        lag=MemoryLag(state),
        dead_letters=dead_letters,
    )
