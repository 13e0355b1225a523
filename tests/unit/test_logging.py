"""Log lines: `LineFormatter` writes exactly what `logging.Formatter(LOG_FORMAT)` would."""

from __future__ import annotations

import logging
import sys

from services.tracing import LOG_FORMAT, LineFormatter


def _record(created: float, msg: str = "order %s placed", *, failing: bool = False) -> logging.LogRecord:
    args = ("o-1",) if "%s" in msg else ()
    exc_info = None
    if failing:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("switchboard.order", logging.WARNING, __file__, 7, msg, args, exc_info)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    record.trace_id = "0af7651916cd43dd8448eb211c80319c"
    return record


def test_line_formatter_writes_what_the_generic_formatter_writes() -> None:
    fast = LineFormatter()
    cases = [
        _record(1_795_785_000.001),
        _record(1_795_785_000.999),  # same second: the cached date
        _record(1_795_785_001.5),  # next second: a new date
        _record(1_795_785_061.25, failing=True),  # traceback appended
        _record(1_795_785_061.75, msg="no args"),
    ]
    for record in cases:
        expected = logging.Formatter(LOG_FORMAT).format(_copy(record))
        assert fast.format(record) == expected


def test_a_record_without_trace_id_still_formats() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain", (), None)
    assert LineFormatter().format(record).endswith(" INFO x [trace=-] plain")


def _copy(record: logging.LogRecord) -> logging.LogRecord:
    """A fresh record: formatting caches the traceback text on the record."""
    return logging.makeLogRecord(dict(record.__dict__))
