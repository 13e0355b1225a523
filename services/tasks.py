"""Background tasks of a service process."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any) and return once it has ended. Its own CancelledError stays with it,
    while a cancellation of the caller (a shutdown timeout) still reaches the caller:
    `suppress(CancelledError)` around `await task` would swallow that one as well."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
