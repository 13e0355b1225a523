"""Small helpers shared by the benchmark modules: event bodies, statistics, service settings.

Service processes and raw broker clients are the tests' (`tests.support.system`, `tests.support.raw`);
nothing here imports them, so the load generator (`bench.load`, a process of its own) starts quickly."""

from __future__ import annotations

import json
import statistics
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ADMIN_TOKEN = "bench-admin-token"
PRODUCTS = tuple(f"BENCH-P{i}" for i in range(8))
FAIL_PRODUCT = "FAIL"
STOCK_PER_PRODUCT = 1_000_000

def namespace(broker: str, scenario: str) -> str:
    """A fresh CHANNEL_NAMESPACE per scenario run (no state shared with any other run)."""
    return f"bench-{broker[0]}{scenario[:4]}-{uuid.uuid4().hex[:8]}"


def order_created(order_id: str, product_id: str, quantity: int = 1, user_id: str = "u-42") -> bytes:
    """An OrderCreated body as the contract describes it (~200 bytes of JSON)."""
    event = {
        "eventType": "OrderCreated",
        "eventId": str(uuid.uuid4()),
        "schemaVersion": 1,
        "occurredAt": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "orderId": order_id,
        "userId": user_id,
        "items": [{"productId": product_id, "quantity": quantity}],
    }
    return json.dumps(event, separators=(",", ":")).encode()


def order_backlog(prefix: str, n: int, fail_ratio: float = 0.0) -> tuple[list[tuple[str, bytes]], int]:
    """`n` (orderId, body) pairs spread over PRODUCTS; every 1/fail_ratio-th one is for FAIL.

    Returns the pairs and how many of them fail."""
    every = round(1 / fail_ratio) if fail_ratio > 0 else 0
    items: list[tuple[str, bytes]] = []
    failing = 0
    for i in range(n):
        order_id = f"{prefix}-{i:07d}"
        if every and i % every == every - 1:
            product = FAIL_PRODUCT
            failing += 1
        else:
            product = PRODUCTS[i % len(PRODUCTS)]
        items.append((order_id, order_created(order_id, product)))
    return items, failing


def rate(count: float, seconds: float | None) -> float | None:
    return round(count / seconds, 1) if seconds and seconds > 0 else None


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (pct in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def spread(values: list[float]) -> dict[str, float] | None:
    """Median and range of one figure over repeats."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def mib(value: int | None) -> float | None:
    return round(value / 2**20, 1) if value is not None else None


def jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def run_on_uvloop(coro: Coroutine[Any, Any, T]) -> T:
    """Run the bench's own processes (raw clients, taps, load generator) on uvloop, the event
    loop the services run on (uvicorn[standard]): a raw-client ceiling measured on the slower
    pure-Python loop would understate it, and a heavier load generator and tap take more of
    the cores the services share."""
    import uvloop

    return uvloop.run(coro)


def service_env(broker: str, ns: str, data_dir: Path, log_level: str, **extra: Any) -> dict[str, str]:
    """A benchmarked service's settings (its processes inherit none from the shell: `SETTINGS_ENV`)."""
    env = {
        "BROKER": broker,
        "CHANNEL_NAMESPACE": ns,
        "DATA_DIR": str(data_dir),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "LOG_LEVEL": log_level,
        "RETRY_MAX_ATTEMPTS": "3",
        "RETRY_DELAY_MS": "2000",
        "RETRY_BACKOFF_MULTIPLIER": "1.0",
        "FAIL_PRODUCT_IDS": "FAIL",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env
