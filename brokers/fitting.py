"""The one rule that makes a re-published copy of a consumed message (a retry copy or a dead
letter: its body plus envelope headers) fit under the broker's size limit (docs/contract.md,
"Size limit").

In this order, each step only while the copy is still too large:

1. every free-text envelope header (`x-exception-message`, `x-exception-type`) is cut to
   FREE_TEXT_CAP characters, ending in CUT_MARK;
2. the body is kept elsewhere (NATS: an Object Store bucket) and referenced by `x-body-ref`,
   `x-body-size` and `x-body-sha256`; the copy's body is empty;
3. the headers the message arrived with (not the envelope) are dropped.

`x-envelope-trimmed` names the steps taken (`exception-text`, `body-spilled`,
`headers-dropped`, comma-separated). A copy that fits is left exactly as it is. Brokers
whose copies always fit (Kafka with provisioned headroom, RabbitMQ, whose limit counts the
body only) give no store: step 2 is then skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from brokers.model import ATTEMPTS_HEADER, H_EXCEPTION_MESSAGE, H_EXCEPTION_TYPE

H_TRIMMED = "x-envelope-trimmed"
H_BODY_REF = "x-body-ref"
H_BODY_SIZE = "x-body-size"
H_BODY_SHA256 = "x-body-sha256"
TRIM_TEXT = "exception-text"
TRIM_SPILLED = "body-spilled"
TRIM_HEADERS = "headers-dropped"
FREE_TEXT_HEADERS = (H_EXCEPTION_MESSAGE, H_EXCEPTION_TYPE)
FREE_TEXT_CAP = 200
"""Characters a free-text envelope header keeps when the copy is too large (CUT_MARK included)."""
CUT_MARK = "...[cut]"
KEPT_HEADERS = frozenset({H_TRIMMED, H_BODY_REF, H_BODY_SIZE, H_BODY_SHA256, ATTEMPTS_HEADER})

Sizer = Callable[[bytes, Mapping[str, Any]], int]
"""The size the broker compares with its limit, for a body and headers (its own encoding)."""


class EnvelopeTooLarge(Exception):
    """Even the trimmed copy (envelope alone, body spilled) exceeds the broker's limit."""


@dataclass(frozen=True)
class Fitted:
    """The copy to publish: `spill` is the body to store under `headers[H_BODY_REF]` first."""

    body: bytes
    headers: dict[str, Any]
    spill: bytes | None = None

    @property
    def trimmed(self) -> list[str]:
        value = self.headers.get(H_TRIMMED)
        return str(value).split(",") if value else []


def cut_text(text: str, cap: int = FREE_TEXT_CAP) -> str:
    """`text` if at most `cap` characters, else its start and CUT_MARK, `cap` characters in all."""
    return text if len(text) <= cap else text[: max(cap - len(CUT_MARK), 0)] + CUT_MARK


def body_reference(body: bytes, name: str) -> dict[str, str]:
    """The headers that stand for a body kept elsewhere under `name`."""
    return {H_BODY_REF: name, H_BODY_SIZE: str(len(body)), H_BODY_SHA256: hashlib.sha256(body).hexdigest()}


def fit(
    body: bytes,
    headers: Mapping[str, Any],
    *,
    limit: int,
    size: Sizer,
    envelope: frozenset[str] | set[str] = frozenset(),
    spill_name: str | None = None,
) -> Fitted:
    """Apply the module's rule to a copy of `body` with `headers` (`envelope`: the header names
    this project added, which step 3 keeps). `spill_name`: where step 2 would keep the body,
    None when this broker has nowhere to keep it. Raises EnvelopeTooLarge when nothing fits."""
    current = dict(headers)
    if size(body, current) <= limit:
        return Fitted(body, current)
    steps: list[str] = []

    def fits(b: bytes) -> bool:
        return size(b, {**current, H_TRIMMED: ",".join(steps)}) <= limit

    cut = {k: cut_text(str(current[k])) for k in FREE_TEXT_HEADERS if k in current}
    if any(cut[k] != current[k] for k in cut):
        current.update(cut)
        steps.append(TRIM_TEXT)
        if fits(body):
            return _done(body, current, steps, None)
    spill = None
    if spill_name is not None and body:
        current.update(body_reference(body, spill_name))
        steps.append(TRIM_SPILLED)
        spill = body
        if fits(b""):
            return _done(b"", current, steps, spill)
    kept = b"" if spill is not None else body
    keep = set(envelope) | KEPT_HEADERS | set(FREE_TEXT_HEADERS)
    dropped = {k: v for k, v in current.items() if k in keep}
    if len(dropped) < len(current):
        current = dropped
        steps.append(TRIM_HEADERS)
        if fits(kept):
            return _done(kept, current, steps, spill)
    raise EnvelopeTooLarge(
        f"a copy of {len(body)} bytes does not fit the broker's limit of {limit} bytes even trimmed ({', '.join(steps)})"
    )


def _done(body: bytes, headers: dict[str, Any], steps: list[str], spill: bytes | None) -> Fitted:
    return Fitted(body, {**headers, H_TRIMMED: ",".join(steps)}, spill)
