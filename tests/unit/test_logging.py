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


def test_control_characters_in_a_message_cannot_forge_a_line() -> None:
    forged = "P1\n2026-01-01 00:00:00,000 INFO switchboard.order [trace=-] order 1 accepted"
    record = _record(1_795_785_000.5, "unknown product %s")
    record.args = (forged,)
    line = LineFormatter().format(record)
    assert "\n" not in line
    assert line.endswith(
        r"unknown product P1\n2026-01-01 00:00:00,000 INFO switchboard.order [trace=-] order 1 accepted"
    )


def test_every_control_character_is_escaped_and_other_text_kept() -> None:
    record = _record(1_795_785_000.5, "v=%s")
    record.args = ("a\rb\tc\x1b[31md\x00e\x7ff\x85g\u2028h é ✓ \\n",)
    message = LineFormatter().format(record).split("] ", 1)[1]
    assert message == r"v=a\rb\tc\x1b[31md\x00e\x7ff\x85g\u2028h é ✓ \n"
    assert message.isprintable()


def test_a_traceback_still_follows_on_lines_of_its_own() -> None:
    record = _record(1_795_785_061.25, "failed for %s", failing=True)
    record.args = ("x\ny",)
    first, *rest = LineFormatter().format(record).split("\n")
    assert first.endswith(r"failed for x\ny")
    assert rest[0] == "Traceback (most recent call last):"
