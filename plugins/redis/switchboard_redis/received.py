"""FastStream's own consumer series (`faststream_received_*`) for the batches this transport reads
itself (no FastStream subscriber runs, so its middleware never sees them): the same names and
labels (`handler` = the stream, as FastStream's Redis middleware labels it) on the registry."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from faststream.prometheus.container import MetricsContainer
from faststream.prometheus.manager import MetricsManager
from faststream.prometheus.types import ProcessingStatus

if TYPE_CHECKING:
    from brokers.model import Delivery, Observability


class ReceivedMetrics:
    """Counts one subscription's batches as FastStream's middleware counts a batch subscriber's."""

    def __init__(self, label: str, observability: Observability) -> None:
        container = MetricsContainer(observability.registry, custom_label_names=())
        self._manager = MetricsManager(container, app_name=observability.app_name)
        self._label = label

    async def around(self, handler: str, batch: list[Delivery], run: Callable[[], Awaitable[None]]) -> None:
        """Run `run` (the engine handling `batch`) counted under `handler`."""
        m, labels, n = self._manager, {"broker": self._label, "handler": handler}, len(batch)
        m.add_received_message(amount=n, **labels)
        m.observe_received_messages_size(size=sum(len(d.body) for d in batch), **labels)
        m.add_received_message_in_process(amount=n, **labels)
        started = time.perf_counter()
        try:
            await run()
        except Exception as exc:
            m.add_received_processed_message_exception(exception_type=type(exc).__name__, **labels)
            m.add_received_processed_message(status=ProcessingStatus.error, amount=n, **labels)
            raise
        else:
            m.add_received_processed_message(status=ProcessingStatus.acked, amount=n, **labels)
        finally:
            m.observe_received_processed_message_duration(duration=time.perf_counter() - started, **labels)
            m.remove_received_message_in_process(amount=n, **labels)
