"""The transport plugin interface: what a broker implements, role by role.

A transport is a module (or any object) with a metric `label`, a `default_url` and
`build(context, engine) -> TransportParts`, registered under the entry-point group
`switchboard.transports` (the built-ins too: see pyproject.toml). `brokers.Transport`
composes the parts with the broker-agnostic engine (`brokers.engine`): batching, the
failure policy, spans, metrics, publish coalescing and lag reporting live there once.
`tests/transport/` proves the contract below for every registered transport.

The delivery contract:

* **Channels.** A channel is a logical stream of JSON events. A publish makes the body
  durable on the broker before it counts as done (Kafka `acks=all`, RabbitMQ publisher
  confirm of a persistent message, JetStream publish ack, Redis `XADD`), keeping one key's
  messages in publish order.
* **Subscriptions.** Each message of a channel reaches each consumer name at least once,
  in channel order per key; messages come in batches, handed to the engine's `Pipeline`.
  The engine runs the handler per message inside the subscription's `batch_scope` and then
  tells the `Consumer` what to do with each message: settle it (acknowledge), give it back
  for another delivery, schedule a retry, or dead-letter it. A batch whose scope fails is
  given back whole.
* **Failure policy** (one `RetryPolicy`, carried out natively): a message whose handler
  raised is delivered again until `max_attempts` deliveries, `delay × multiplier^(n-1)`
  before delivery n+1, without blocking other messages; then, or at once for a poison
  message, its original bytes go to `<channel>.DLT` with the engine's envelope headers.
* **Observability.** Lag is the number of messages waiting for one consumer name.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from brokers.provisioning import Provisioning

if TYPE_CHECKING:
    from brokers.metrics import DeliveryMetrics
    from brokers.model import DeadLetter, Delivery, Observability, Outgoing, RetryPolicy, Subscription
    from brokers.provisioning import Provisioned

DeadLetterHandler = Callable[["DeadLetter"], Awaitable[None]]


@dataclass(frozen=True)
class TransportContext:
    """Everything a transport is built from (`config.Settings`, resolved)."""

    url: str
    """BROKER_URL with credentials (a secret: log `brokers.redacted(url)`)."""
    policy: RetryPolicy
    metrics: DeliveryMetrics
    observability: Observability
    namespace: str = ""
    """CHANNEL_NAMESPACE: channel names already carry it; consumer identities that are global on
    a broker (Kafka group ids) get it too, so isolated runs never share them."""
    provisioning: Provisioning = field(default_factory=Provisioning)
    options: Mapping[str, str] = field(default_factory=dict)
    """Broker-specific settings by name (e.g. `kafka_sasl_mechanism`)."""


class Pipeline(Protocol):
    """The engine's intake for one subscription."""

    @property
    def draining(self) -> bool:
        """True once the transport stops: hand nothing more in, give what arrives back."""

    async def submit(self, deliveries: list[Delivery]) -> None:
        """Handle `deliveries` (channel order) in a batch; returns once they are handled (their
        settlement follows in the background, through `Consumer.settle`)."""


class Engine(Protocol):
    """What the engine offers a transport's parts."""

    async def publish_one(self, message: Outgoing) -> None:
        """Publish durably, coalesced with the other calls of this event-loop turn; raises its failure."""

    async def settled(self) -> None:
        """Return once every batch submitted so far is handled and settled."""


class Publisher(Protocol):
    """Publishes durably (the channel contract above)."""

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Publish each message with the client library; one outcome per message (None once the
        broker confirmed it), a failure affecting no other message; sends start in order."""

    async def publish(self, message: Outgoing) -> None:
        """Publish one message through the path that records publish spans (when tracing)."""

    def destination_label(self, message: Outgoing) -> str:
        """The `destination` label of the publish metrics for `message`."""


class Consumer(Protocol):
    """Reads subscriptions and carries out the engine's decisions natively."""

    def subscribe(self, sub: Subscription, pipeline: Pipeline) -> None:
        """Create the native subscriber(s), retry plumbing and dead-letter channel of `sub`;
        hand each batch read to `pipeline.submit`. Called before the broker starts."""

    async def schedule_retry(self, sub: Subscription, delivery: Delivery, attempt: int, delay_ms: int) -> None:
        """Arrange delivery `attempt` of the message after `delay_ms`, durably, before returning."""

    async def dead_letter(self, sub: Subscription, delivery: Delivery, headers: dict[str, str]) -> None:
        """Put the original bytes on `<channel>.DLT` with `headers` added, durably, before returning."""

    async def settle(self, sub: Subscription, done: list[Delivery], redeliver: list[Delivery]) -> None:
        """Acknowledge `done` and give `redeliver` back for another delivery, never acknowledging
        anything after a redelivered message in channel order. Deliveries whose `settled` is set
        were settled by a retry or dead-letter move already and are not passed."""

    async def drain(self, settled: Callable[[], Awaitable[None]]) -> None:
        """Stop reading (what is delivered meanwhile comes again later), await `settled()`, then
        finish what settlement left in flight (e.g. offset commits). Called before `Lifecycle.stop`."""


class Lag(Protocol):
    """How far consumers are behind."""

    async def consumer_lag(self, channel: str, consumer: str) -> int | None:
        """Messages of `channel` waiting for `consumer`, None if unknown right now (never
        subscribed, or the broker does not answer)."""

    def consuming(self) -> bool:
        """False while a subscriber is known not to receive (e.g. out of its Kafka group)."""


class DeadLetters(Protocol):
    """`<channel>.DLT`: listening, listing and replay."""

    def listen(self, channel: str, consumer: str, handler: DeadLetterHandler) -> None:
        """Deliver each message dead-lettered from `channel` to `handler` once per `consumer`,
        leaving it on the DLT; a handler error is logged, never retried."""

    async def list(self, channel: str, limit: int) -> list[DeadLetter]:
        """Read (without consuming) up to `limit` messages of `<channel>.DLT`, oldest first."""

    async def replay(self, channel: str, limit: int) -> builtins.list[DeadLetter]:
        """Send up to `limit` not yet replayed dead letters back to their original channel with
        `brokers.model.replay_headers`; each is replayed once however often this runs."""


class Channels(Protocol):
    """Broker objects: what exists and what the service publishes."""

    def declare_publisher(self, channel: str, schema: Any, description: str) -> None:
        """Make `channel` known as published by this service (AsyncAPI, provisioning)."""

    async def provision(self, *, dry_run: bool = False) -> list[Provisioned]:
        """Create the broker objects used so far that are missing and compare the others, one
        outcome each; a difference is reported, never altered. `dry_run`: create nothing."""


class Lifecycle(Protocol):
    """Connection and the transport's own background work."""

    async def connect(self) -> None:
        """Connect (the FastStream broker's subscribers start later, with the app)."""

    async def start(self) -> None:
        """After connecting: provision when enabled, start watchers and own consumers."""

    async def stop(self) -> None:
        """Release what `start` and the publisher acquired (after `Consumer.drain`)."""

    async def ping(self, within_s: float) -> bool:
        """Whether the broker answers within `within_s`."""


@dataclass(frozen=True)
class TransportParts:
    """A broker's implementation of each role; one object may play several."""

    broker: Any
    """The FastStream broker the service app runs (subscribers, AsyncAPI), or None for a
    transport that runs its consumers itself (from `Lifecycle.start`)."""
    lifecycle: Lifecycle
    channels: Channels
    publisher: Publisher
    consumer: Consumer
    lag: Lag
    dead_letters: DeadLetters


class TransportPlugin(Protocol):
    """What the entry point `switchboard.transports:<name>` loads (a module qualifies).

    Optionally also `capabilities: frozenset[str]`, the flags below that the transport has; the
    conformance suite (`tests/transport/`) skips a case only when a flag it needs is missing. A
    plugin without the attribute has every flag (as a networked broker does). Known flags:

    * ``survives-process-restart``: messages and consumer progress outlive the process that
      used them (a killed process's unsettled messages reach the next one); memory lacks it.
    * ``reads-from-beginning``: a consumer name subscribing for the first time gets the messages
      published before (a log: Kafka, JetStream, memory); RabbitMQ queues only keep what arrives
      once they exist.
    """

    label: str
    """Value of the `broker` metric label (kafka | rabbitmq | nats | …)."""
    default_url: str
    """BROKER_URL when none is set."""

    def build(self, context: TransportContext, engine: Engine) -> TransportParts:
        """The parts, wired to `engine`; nothing connects yet."""
