"""Runs the four services as real processes (`faststream run services.<name>:app`).

Each `System` gets its own channel namespace and data directory, so runs and
brokers never see each other's messages or state.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from bench.common import metric_value as sample_sum
from bench.common import spawn_service

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("order", "inventory", "payment", "notification")
BASE_PORT = {"kafka": 18080, "rabbit": 18180, "nats": 18280}
ADMIN_TOKEN = "test-admin-token"
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")

T = TypeVar("T")


def uid(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool],
    *,
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.1,
) -> T:
    """Poll `probe` until `until(result)` holds; fail with the last result after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await probe()
            if until(last):
                return last
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


def free_port(ports: range) -> int:
    """A port of `ports` nobody listens on (random start, so parallel runs rarely collide)."""
    start = random.randrange(len(ports))
    for i in range(len(ports)):
        port = ports[(start + i) % len(ports)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process gracefully (SIGTERM, 20 s), then by force."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def brokers_script(*args: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "brokers.sh"), *args], check=True, cwd=ROOT)


class ServiceProcess:
    def __init__(self, name: str, port: int, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.port = port
        self.env = env
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **overrides: str) -> None:
        self.proc = spawn_service(self.name, self.port, {**os.environ, **self.env, **overrides}, self.log_path)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no graceful stop, nothing flushed or acknowledged on the way out."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def log_lines(self, needle: str) -> list[tuple[datetime, str]]:
        """(timestamp, line) of every log line containing `needle`."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if needle in line and (m := LOG_TIME.match(line)):
                found.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), line))
        return found


class System:
    """The four services on one broker, talking to each other through it."""

    def __init__(
        self,
        broker: str,
        workdir: Path,
        port_base: int | None = None,
        service_env: dict[str, dict[str, str]] | None = None,
        **env: str,
    ) -> None:
        """`env` goes to every service, `service_env[name]` to that service only (on top of it)."""
        self.broker = broker
        self.namespace = uid(f"t{broker[0]}")
        self.workdir = workdir
        self.env = {
            "BROKER": broker,
            "CHANNEL_NAMESPACE": self.namespace,
            "DATA_DIR": str(workdir / "data"),
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "RETRY_MAX_ATTEMPTS": "3",
            "RETRY_DELAY_MS": "400",
            "RETRY_BACKOFF_MULTIPLIER": "2.0",
            "LOG_LEVEL": "INFO",
            **env,
        }
        base = port_base or BASE_PORT[broker]
        own = service_env or {}
        self.services = {
            name: ServiceProcess(name, base + i, {**self.env, **own.get(name, {})}, workdir)
            for i, name in enumerate(SERVICES)
        }
        self.http = httpx.AsyncClient(timeout=10.0)

    def channel(self, name: str) -> str:
        return f"{self.namespace}.{name}"

    def delivery_lines(self, service: str, channel: str, order_id: str, *outcomes: str) -> list[tuple[datetime, str]]:
        """(timestamp, line) of the line `service` logs for each delivery of `order_id`'s messages
        on `channel` (a contract name) whose outcome is one of `outcomes` (`handled`,
        `retrying`, `dead-lettering`; default: all three)."""
        wanted = outcomes or ("handled", "retrying", "dead-lettering")
        described = f"channel={self.channel(channel)} "
        return [
            (t, line)
            for t, line in self.services[service].log_lines(f"orderId={order_id} ")
            if described in line and any(f"] {outcome} " in line for outcome in wanted)
        ]

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.services[service].port}{path}"

    async def start(self, *names: str, **overrides: str) -> None:
        for name in names or SERVICES:
            self.services[name].start(**overrides)
        for name in names or SERVICES:
            await self.wait_ready(name)

    async def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        proc = self.services[name]

        async def probe() -> int:
            if proc.proc is not None and proc.proc.poll() is not None:
                raise AssertionError(f"{name} exited: {proc.log_path.read_text()[-3000:]}")
            return (await self.http.get(self.url(name, "/ready"))).status_code

        await eventually(probe, lambda s: s == 200, timeout=timeout, what=f"{name} /ready")

    def stop(self, *names: str) -> None:
        for name in names or SERVICES:
            self.services[name].stop()

    async def restart(self, name: str, **overrides: str) -> None:
        self.stop(name)
        await self.start(name, **overrides)

    # --- HTTP helpers used by the contract tests ------------------------------------
    async def set_stock(self, product_id: str, available: int) -> None:
        r = await self.http.put(
            self.url("inventory", f"/inventory/{product_id}"),
            json={"available": available},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert r.status_code == 200, r.text

    async def stock(self, product_id: str) -> int:
        r = await self.http.get(self.url("inventory", f"/inventory/{product_id}"))
        assert r.status_code == 200, r.text
        return int(r.json()["available"])

    async def post_order(self, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(self.url("order", "/orders"), json=body)

    async def post_traced_order(self, body: dict[str, Any]) -> tuple[httpx.Response, str]:
        """POST the order as part of a new W3C trace of the caller's; returns (response, trace id)."""
        trace_id = uid().ljust(32, "0")
        traceparent = f"00-{trace_id}-{uid().ljust(16, '0')}-01"
        r = await self.http.post(self.url("order", "/orders"), json=body, headers={"traceparent": traceparent})
        return r, trace_id

    async def order(self, order_id: str) -> dict[str, Any]:
        r = await self.http.get(self.url("order", f"/orders/{order_id}"))
        assert r.status_code == 200, r.text
        return r.json()

    async def wait_status(self, order_id: str, statuses: set[str], timeout: float = 30.0) -> dict[str, Any]:
        return await eventually(
            lambda: self.order(order_id),
            lambda o: o["status"] in statuses,
            timeout=timeout,
            what=f"order {order_id} in {statuses}",
        )

    async def metrics(self, service: str) -> str:
        r = await self.http.get(self.url(service, "/metrics"))
        assert r.status_code == 200
        return r.text

    async def aclose(self) -> None:
        self.stop()
        await self.http.aclose()


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
    return sample_sum(text, name, **labels) or 0.0
