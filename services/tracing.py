"""Tracing and log correlation.

Contract: every HTTP request and every handled message runs inside a W3C trace
context. The `traceparent` of `POST /orders` (the caller's, or a new one) is stored
with the outbox event, published in the message headers, and continued by the
consumer's handling, its retries and its dead letter. Spans are recorded and exported
over OTLP/HTTP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (then also FastStream's
publish/consume spans); without it only the context travels, which costs next to
nothing per message. Every log line carries `trace=<trace id>` (or `-` outside one).

A log record is one line: control characters in its message (line breaks among them, from a
field a client or producer chose) are written escaped (`\\n`, `\\x1b`), so no value can
forge a line of its own.
"""

from __future__ import annotations

import logging
import random
import re
import time

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [trace=%(trace_id)s] %(message)s"
TRACE_HEADERS = ("traceparent", "tracestate")
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""C0 and C1 controls, DEL and the Unicode line and paragraph separators."""
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def tracer_provider(service_name: str, otlp_endpoint: str | None) -> TracerProvider | None:
    """The SDK provider exporting to `otlp_endpoint`, or None: propagate context only."""
    if not otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    endpoint = otlp_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def new_trace_context() -> context.Context:
    """A context holding a fresh, sampled trace (for requests without `traceparent` when no
    spans are recorded, so their events still carry a trace id)."""
    span_context = trace.SpanContext(
        trace_id=random.getrandbits(128) or 1,
        span_id=random.getrandbits(64) or 1,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context))


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else "-"


class TraceIdFilter(logging.Filter):
    """Adds `trace_id` to every record (for LOG_FORMAT)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = current_trace_id()
        return True


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED_ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape_controls(text: str) -> str:
    """`text` with every control character (CONTROL_CHARS) written as an escape: `\\n`, `\\x1b`, `\\u2028`."""
    return text if text.isprintable() else CONTROL_CHARS.sub(_escaped, text)


class LineFormatter(logging.Formatter):
    """LOG_FORMAT, written out: the same text as `logging.Formatter(LOG_FORMAT)` (the unit
    tests compare them), for about half its cost, except that control characters in the message
    are escaped (`escape_controls`: one record, one line; a traceback still follows on lines of
    its own). Every handled message logs a line, and the generic formatter re-renders the date
    with `strftime` and interpolates a dict for each. Here the date is rendered once per second."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)
        self._second = -1
        self._date = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._date, self._second = time.strftime(self.default_time_format, self.converter(second)), second
        return f"{self._date},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        return (
            f"{record.asctime} {record.levelname} {record.name} "
            f"[trace={getattr(record, 'trace_id', '-')}] {escape_controls(record.message)}"
        )


def configure_logging(level: str) -> None:
    # LOG_FORMAT uses no caller, thread or process fields: skip collecting them for every record
    logging._srcfile = None  # type: ignore[attr-defined]  # documented switch (logging docs, "Optimization")
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    if not any(isinstance(f, TraceIdFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(LineFormatter())
        handler.addFilter(TraceIdFilter())
        root.addHandler(handler)
    root.setLevel(level.upper())


def trace_headers() -> dict[str, str]:
    """The current trace context as W3C headers (empty outside a span)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in TRACE_HEADERS}
