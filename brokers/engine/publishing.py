"""Publishing for every transport: the traced or the client path, FastStream's publish metrics,
and the coalescing of single publishes (retry copies, dead letters) into batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

from faststream.prometheus.container import MetricsContainer
from faststream.prometheus.manager import MetricsManager
from faststream.prometheus.types import PublishingStatus

from brokers.engine.tracing import continued_trace

if TYPE_CHECKING:
    from brokers.interface import Publisher
    from brokers.model import Observability, Outgoing


class PublishedMetrics:
    """FastStream's own publish series (`faststream_published_*`), for messages sent past its
    publisher. The container reuses the series FastStream's middleware registered."""

    def __init__(self, label: str, observability: Observability) -> None:
        container = MetricsContainer(observability.registry, custom_label_names=())
        self._manager = MetricsManager(container, app_name=observability.app_name)
        self._label = label

    def count(self, destinations: Sequence[str], outcomes: Sequence[BaseException | None], seconds: float) -> None:
        per_destination: dict[str, list[BaseException | None]] = {}
        for destination, outcome in zip(destinations, outcomes, strict=True):
            per_destination.setdefault(destination, []).append(outcome)
        metrics = self._manager
        for destination, results in per_destination.items():
            labels = {"broker": self._label, "destination": destination}
            metrics.observe_published_message_duration(duration=seconds, **labels)
            failures = [r for r in results if r is not None]
            for exc in failures:
                metrics.add_published_message_exception(exception_type=type(exc).__name__, **labels)
            if len(results) > len(failures):
                metrics.add_published_message(
                    status=PublishingStatus.success, amount=len(results) - len(failures), **labels
                )
            if failures:
                metrics.add_published_message(status=PublishingStatus.error, amount=len(failures), **labels)


class Publishing:
    """`publish_batch` and `publish_one` on top of a broker's `Publisher`."""

    def __init__(self, publisher: Publisher, label: str, observability: Observability) -> None:
        self._publisher = publisher
        self._traced = observability.tracer_provider is not None
        self._metrics = PublishedMetrics(label, observability)
        self._singles: list[tuple[Outgoing, asyncio.Future[BaseException | None]]] = []
        self._singles_sender: asyncio.Task[None] | None = None

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Publish each message durably; one outcome per message (None once the broker confirmed
        it, else the exception), a failure affecting no other message; sends start in the given
        order. When spans are recorded every message goes through FastStream's publisher (which
        records the publish spans and counts it); otherwise straight to the client library, a
        fraction of the cost, counted here with one duration observation per destination."""
        if not messages:
            return []
        if self._traced:
            return await asyncio.gather(*(self._publish_traced(m) for m in messages), return_exceptions=True)
        started = time.perf_counter()
        outcomes = await self._publisher.send_batch(messages)
        destinations = [self._publisher.destination_label(m) for m in messages]
        self._metrics.count(destinations, outcomes, time.perf_counter() - started)
        return outcomes

    async def publish_one(self, message: Outgoing) -> None:
        """Publish one message as `publish_batch` does; raises its failure. The calls made in one
        event-loop turn (the retry copies and dead letters of a batch) share one `publish_batch`,
        started in call order: one confirmation wait and one metrics update for all of them."""
        outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._singles.append((message, outcome))
        if len(self._singles) == 1:  # the task is kept: the loop holds tasks only weakly
            self._singles_sender = asyncio.create_task(self._publish_singles())
        failure = await outcome
        if failure is not None:
            raise failure

    async def _publish_singles(self) -> None:
        singles, self._singles = self._singles, []
        outcomes: Sequence[BaseException | None]
        try:
            outcomes = await self.publish_batch([message for message, _ in singles])
        except BaseException as exc:  # every caller sees it as its outcome
            outcomes = [exc] * len(singles)
            if not isinstance(exc, Exception):
                raise  # a cancellation: the callers are answered first (finally)
        finally:
            for (_, waiter), outcome in zip(singles, outcomes, strict=True):
                if not waiter.done():
                    waiter.set_result(outcome)

    async def _publish_traced(self, message: Outgoing) -> None:
        """`Publisher.publish` inside the trace context `message` carries: the publish span continues it."""
        with continued_trace(message.headers):
            await self._publisher.publish(message)


async def confirmations(
    sends: Sequence[Awaitable[Any] | BaseException], timeout_s: float | None
) -> list[BaseException | None]:
    """Outcome of each started send (an awaitable confirmation, or the exception that kept it
    from starting): None when confirmed within `timeout_s` of this call, else the exception
    (`TimeoutError` for one still unconfirmed, which is then cancelled). Only for clients where
    cancelling abandons the send or the broker drops a re-send; `timeout_s=None` waits for
    the client's own verdict."""
    futures = {i: asyncio.ensure_future(s) for i, s in enumerate(sends) if not isinstance(s, BaseException)}
    if futures:
        await asyncio.wait(futures.values(), timeout=timeout_s)
    outcomes: list[BaseException | None] = []
    for i, send in enumerate(sends):
        future = futures.get(i)
        if future is None:
            outcomes.append(send)  # type: ignore[arg-type]
        elif not future.done():
            future.cancel()
            outcomes.append(TimeoutError(f"not confirmed within {timeout_s:.0f} s"))
        else:
            outcomes.append(future.exception())
    return outcomes
