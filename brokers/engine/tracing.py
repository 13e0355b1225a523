"""W3C trace context carried in message headers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate

_PROPAGATED_FIELDS = frozenset(propagate.get_global_textmap().fields)


def carried_context(headers: Mapping[str, Any]) -> otel_context.Context:
    """The W3C trace context carried by message headers (non-text values, as RabbitMQ may
    carry, ignored); an empty context when they carry none (a foreign producer's message)."""
    if not _PROPAGATED_FIELDS.intersection(headers):
        return otel_context.Context()
    return propagate.extract({k: v for k, v in headers.items() if isinstance(v, str)})


@contextlib.contextmanager
def continued_trace(headers: Mapping[str, Any]) -> Iterator[None]:
    """Run the block in the trace context carried by `headers`."""
    token = otel_context.attach(carried_context(headers))
    try:
        yield
    finally:
        otel_context.detach(token)
