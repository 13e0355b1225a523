"""HTTP load for `POST /orders`, always in a separate process from the measurements.

* `run_wrk(...)`: Debian's `wrk` with `post_orders.lua` (unique orderId per request),
  closed loop over keep-alive connections; the script prints status counts as JSON.
* `python -m bench.load closed …`: the same closed loop in asyncio, when wrk is missing.
* `python -m bench.load rate …`: open loop at a fixed rate; each request has a scheduled
  send time (what latency is measured from, so a stalled server cannot hide its delay),
  the actual send time and the response time, written to a JSON file.

Every loop is bounded by a request count and a duration; connections are loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import run_on_uvloop

LUA = Path(__file__).with_name("post_orders.lua")
ROOT = LUA.parents[1]
REQUEST_TIMEOUT_S = 10.0
MAX_CLOSED_LOOP_REQUESTS = 2_000_000
WRK_JSON_PREFIX = "BENCH-JSON "


def order_body(order_id: str, index: int, products: int) -> bytes:
    body = {
        "orderId": order_id,
        "userId": "bench-user",
        "items": [{"productId": f"BENCH-P{index % products}", "quantity": 1}],
    }
    return json.dumps(body, separators=(",", ":")).encode()


class HttpConn:
    """One keep-alive HTTP/1.1 connection that can POST JSON and read the status."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            await self.open()
        assert self.reader is not None
        assert self.writer is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed by server")
        status = int(status_line.split()[1])
        length, chunked, close = 0, False, False
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            while (size := int((await self.reader.readline()).split(b";")[0], 16)) > 0:
                await self.reader.readexactly(size + 2)
            await self.reader.readline()
        elif length:
            await self.reader.readexactly(length)
        if close:
            await self.close()
        return status

    async def timed_post(self, path: str, body: bytes) -> int:
        """POST with a timeout; -1 (and a fresh connection next time) on any transport error."""
        try:
            return await asyncio.wait_for(self.post(path, body), REQUEST_TIMEOUT_S)
        except (OSError, ConnectionError, ValueError, IndexError, TimeoutError, asyncio.IncompleteReadError):
            await self.close()
            return -1


async def open_loop(
    url: str, rate: float, duration: float, connections: int, prefix: str, products: int
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    total = int(rate * duration)
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    records: dict[str, list[float]] = {}
    conns = [HttpConn(host, port) for _ in range(connections)]
    for conn in conns:
        await conn.open()
    start = time.monotonic() + 0.05

    async def schedule() -> None:
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((i, start + i / rate))
        for _ in conns:
            queue.put_nowait(None)

    async def work(conn: HttpConn) -> None:
        while (item := await queue.get()) is not None:
            i, scheduled = item
            order_id = f"{prefix}-{i:07d}"
            sent = time.monotonic()
            status = await conn.timed_post("/orders", order_body(order_id, i, products))
            records[order_id] = [scheduled, sent, time.monotonic(), status]

    try:
        await asyncio.gather(schedule(), *(work(c) for c in conns))
    finally:
        for conn in conns:
            await conn.close()
    return {
        "mode": "rate",
        "rate": rate,
        "duration_s": duration,
        "requested": total,
        "start": start,
        "records": records,
    }


async def closed_loop(url: str, duration: float, connections: int, prefix: str, products: int) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    counter = iter(range(MAX_CLOSED_LOOP_REQUESTS))
    start = time.monotonic()
    deadline = start + duration

    async def work() -> None:
        conn = HttpConn(host, port)
        try:
            for i in counter:
                if time.monotonic() >= deadline:
                    return
                sent = time.monotonic()
                status = await conn.timed_post("/orders", order_body(f"{prefix}-{i:07d}", i, products))
                latencies.append(time.monotonic() - sent)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
        finally:
            await conn.close()

    await asyncio.gather(*(work() for _ in range(connections)))
    elapsed = time.monotonic() - start
    latencies.sort()
    pct = (
        {p: latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1000 for p in (50, 99)}
        if latencies
        else {}
    )
    return {
        "tool": "python",
        "duration_s": elapsed,
        "requests": sum(statuses.values()),
        "generated": sum(statuses.values()),
        "accepted": statuses.get("202", 0),
        "status": statuses,
        "latency_ms": pct,
    }


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


async def run_wrk(url: str, connections: int, duration: float, prefix: str, products: int) -> dict[str, Any]:
    """Closed-loop POST /orders load with wrk (1 thread); returns status counts and duration."""
    env = {**os.environ, "BENCH_PREFIX": prefix, "BENCH_PRODUCTS": str(products)}
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        url + "/orders",
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), duration + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    for line in text.splitlines():
        if line.startswith(WRK_JSON_PREFIX):
            result = json.loads(line[len(WRK_JSON_PREFIX) :])
            result["tool"] = "wrk"
            result["duration_s"] = result.pop("duration_us") / 1e6
            result["accepted"] = result["status"].get("202", 0)
            return result
    raise RuntimeError(
        f"wrk printed no result (exit {proc.returncode}): {text[-800:]} {err.decode(errors='replace')[-800:]}"
    )


async def run_python_load(args: list[str], timeout: float) -> dict[str, Any]:
    """Run `python -m bench.load <args>` in its own process; returns what it wrote to --out."""
    out = Path(args[args.index("--out") + 1])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.load",
        *args,
        cwd=str(ROOT),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode(errors='replace')[-1500:]}")
    return json.loads(await asyncio.to_thread(out.read_text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("mode", choices=["rate", "closed"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--products", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.mode == "rate":
        coro = open_loop(args.url, args.rate, args.duration, args.connections, args.prefix, args.products)
    else:
        coro = closed_loop(args.url, args.duration, args.connections, args.prefix, args.products)
    result = run_on_uvloop(asyncio.wait_for(coro, args.duration + 60))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
