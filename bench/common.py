"""Small helpers shared by the benchmark modules: event bodies, statistics, RSS, metrics."""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
FASTSTREAM = str(Path(sys.executable).parent / "faststream")
ADMIN_TOKEN = "bench-admin-token"
PRODUCTS = tuple(f"BENCH-P{i}" for i in range(8))
FAIL_PRODUCT = "FAIL"
STOCK_PER_PRODUCT = 1_000_000

DEFAULT_URLS = {
    "kafka": "localhost:9092",
    "rabbit": "amqp://guest:guest@localhost:5672/",
    "nats": "nats://127.0.0.1:4222",
}
BROKERS = tuple(DEFAULT_URLS)
PORT_BASE = {"kafka": 28300, "rabbit": 28330, "nats": 28360}
"""HTTP ports of the services a benchmark starts: 28300-28399 (see docs/benchmarks.md)."""


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


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def spawn_service(name: str, port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`faststream run services.<name>:app` on `port` with exactly `env` (plus HTTP_PORT), its
    output appended to `log_path`; refuses a taken port (a leftover process would answer)."""
    if not port_free(port):
        raise RuntimeError(f"port {port} for {name} is taken: a leftover service process?")
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [FASTSTREAM, "run", f"services.{name}:app"],
            cwd=ROOT,
            env={**env, "HTTP_PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def rss_bytes(pid: int) -> int | None:
    """Resident memory of `pid` and its descendants (VmRSS from /proc), None if gone."""
    tree = _children()
    total, seen, todo = 0, False, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        if m := re.search(r"^VmRSS:\s+(\d+) kB", status, re.M):
            total += int(m.group(1)) * 1024
            seen = True
        todo.extend(tree.get(current, ()))
    return total if seen else None


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of `name` whose labels include `labels`; None if there is none."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        label_part, _, value = line[len(name) + 1 :].rpartition("} ")
        pairs = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_part))
        if all(pairs.get(k) == v for k, v in labels.items()):
            total += float(value)
            found = True
    return total if found else None


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
