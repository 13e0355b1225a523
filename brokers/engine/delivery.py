"""The failure policy, shared by every transport: batches, handler calls, retries, dead letters.

The engine decides; the broker's `Consumer` (brokers.interface) carries the decision out natively.
"""

from __future__ import annotations

import asyncio
import logging
from functools import cached_property
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from brokers.engine.batching import Batcher, SettleQueue
from brokers.engine.tracing import carried_context, continued_trace
from brokers.model import REASON_EXHAUSTED, REASON_POISON, Delivery, Failure, dead_letter_headers, is_poison

if TYPE_CHECKING:
    from brokers.interface import Consumer
    from brokers.metrics import DeliveryMetrics
    from brokers.model import Observability, RetryPolicy, Subscription

log = logging.getLogger("switchboard.delivery")
events_log = logging.getLogger("switchboard.events")
"""One line per delivery, naming its outcome (handled, retrying, dead-lettering) and the message:
channel, consumer, attempt, orderId, eventId, eventType."""


def describe(sub: Subscription, attempt: int, event: Any) -> str:
    return (
        f"channel={sub.channel} consumer={sub.consumer} attempt={attempt} orderId={getattr(event, 'order_id', '-')} "
        f"eventId={getattr(event, 'event_id', '-')} eventType={getattr(event, 'event_type', '-')}"
    )


class SubscriptionPipeline:
    """One subscription's intake (`brokers.interface.Pipeline`): batches, then settlement."""

    def __init__(self, engine: DeliveryEngine, sub: Subscription) -> None:
        self._engine = engine
        self.sub = sub
        self.settler = SettleQueue()
        self.batcher = Batcher(self._run)

    @property
    def draining(self) -> bool:
        return self._engine.draining

    async def submit(self, deliveries: list[Delivery]) -> None:
        await self.batcher.submit(deliveries)

    async def idle(self) -> None:
        await self.batcher.idle()
        await self.settler.idle()

    async def _run(self, batch: list[Delivery]) -> None:
        sub, engine = self.sub, self._engine
        failed: list[Failure] = []
        try:
            async with sub.batch_scope():
                for delivery in batch:
                    failure = await engine.handle(sub, delivery)
                    if failure is not None:
                        failed.append(failure)
        except Exception:
            log.exception(
                "batch of %d message(s) of %s for %s not committed; redelivering it",
                len(batch),
                sub.channel,
                sub.consumer,
            )
            await self.settler.add(_nothing_lost, lambda _: engine.settle(sub, [], batch))
            return
        await self.settler.add(lambda: engine.hand_off(sub, failed), lambda lost: engine.settle(sub, batch, lost))


async def _nothing_lost() -> list[Delivery]:
    return []


class DeliveryEngine:
    """Runs handlers and applies the `RetryPolicy`, for any broker (`brokers.interface.Engine`'s
    delivery half; `brokers.transport.Transport` adds publishing)."""

    def __init__(self, label: str, policy: RetryPolicy, metrics: DeliveryMetrics, observability: Observability) -> None:
        self.label = label
        self.policy = policy
        self.metrics = metrics
        self.observability = observability
        self.draining = False
        self.pipelines: list[SubscriptionPipeline] = []
        self.consumer: Consumer | None = None

    def bind(self, consumer: Consumer) -> None:
        """The broker's consumer, which carries out settlement, retries and dead letters."""
        self.consumer = consumer

    def pipeline(self, sub: Subscription) -> SubscriptionPipeline:
        pipeline = SubscriptionPipeline(self, sub)
        self.pipelines.append(pipeline)
        return pipeline

    async def settled(self) -> None:
        for pipeline in self.pipelines:
            await pipeline.idle()

    @property
    def _moves(self) -> Consumer:
        if self.consumer is None:
            raise RuntimeError("DeliveryEngine.bind was not called")
        return self.consumer

    async def handle(self, sub: Subscription, delivery: Delivery) -> Failure | None:
        """Run the handler on one message inside a consumer span continuing the message's trace;
        returns the failure instead of raising it. Logs one line per handled message (a failed
        one gets its line from `on_failure`, naming what became of it)."""
        event = None
        with self._span(sub, delivery):
            try:
                event = sub.adapter.validate_json(delivery.body)
                await sub.handler(event)
            except Exception as exc:  # noqa: BLE001 - every failure goes through the policy
                return Failure(delivery, exc, describe(sub, delivery.attempt, event))
            events_log.info("handled %s", describe(sub, delivery.attempt, event))
        return None

    async def hand_off(self, sub: Subscription, failed: list[Failure]) -> list[Delivery]:
        """Hand each failed message to retry/DLT; returns the ones that could not be handed on."""
        if not failed:
            return []
        outcomes = await asyncio.gather(*(self.on_failure(sub, f) for f in failed), return_exceptions=True)
        lost = [f.delivery for f, outcome in zip(failed, outcomes, strict=True) if isinstance(outcome, BaseException)]
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.error("could not hand a failed message of %s to retry/DLT; redelivering: %s", sub.channel, outcome)
        return lost

    async def settle(self, sub: Subscription, batch: list[Delivery], lost: list[Delivery]) -> None:
        """Settle a batch: `lost` (not handed on, or the whole batch when its scope failed) comes again."""
        pending = [d for d in batch if not d.settled]
        lost_ids = {id(d) for d in lost}
        done = [d for d in pending if id(d) not in lost_ids]
        await self._moves.settle(sub, done, [d for d in pending if id(d) in lost_ids])

    async def on_failure(self, sub: Subscription, failure: Failure) -> None:
        delivery, exc = failure.delivery, failure.exc
        with continued_trace(delivery.headers):
            attempt = delivery.attempt
            if not is_poison(exc) and attempt < self.policy.max_attempts:
                delay_ms = self.policy.delay_ms_before(attempt + 1)
                events_log.warning(
                    "retrying in %d ms, attempt %d of %d failed: %s: %s; %s",
                    delay_ms,
                    attempt,
                    self.policy.max_attempts,
                    type(exc).__name__,
                    exc,
                    failure.described,
                )
                await self._moves.schedule_retry(sub, delivery, attempt + 1, delay_ms)
                self.metrics.retry_scheduled(sub.channel, sub.consumer)
                return
            reason = REASON_POISON if is_poison(exc) else REASON_EXHAUSTED
            events_log.error(
                "dead-lettering (%s after %d attempt(s)): %s: %s; %s",
                reason,
                attempt,
                type(exc).__name__,
                exc,
                failure.described,
            )
            await self._moves.dead_letter(sub, delivery, dead_letter_headers(sub, exc, attempt))
            self.metrics.dead_lettered(sub.channel, sub.consumer, reason)

    @cached_property
    def _tracer(self) -> trace.Tracer:
        provider = self.observability.tracer_provider or trace.NoOpTracerProvider()
        return provider.get_tracer("switchboard.delivery")

    def _span(self, sub: Subscription, delivery: Delivery) -> Any:
        """The consumer span around one message, in the trace its headers carry. Without a tracer
        provider (spans are not exported) only that context is attached: the same trace id for
        log lines and for the events the handler writes, without a non-recording span per message."""
        if self.observability.tracer_provider is None:
            return continued_trace(delivery.headers)
        return self._tracer.start_as_current_span(
            f"{sub.channel} process",
            context=carried_context(delivery.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": self.label,
                "messaging.destination.name": sub.channel,
                "messaging.consumer.group.name": sub.consumer,
            },
        )
