"""Service processes started by a benchmark: `faststream run services.<name>:app`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import ADMIN_TOKEN, PRODUCTS, STOCK_PER_PRODUCT, metric_value, rss_bytes, spawn_service

STOP_TIMEOUT_S = 20.0
SETTINGS_ENV = {
    "BROKER",
    "BROKER_URL",
    "DATABASE_URL",
    "DATA_DIR",
    "RETRY_MAX_ATTEMPTS",
    "RETRY_DELAY_MS",
    "RETRY_BACKOFF_MULTIPLIER",
    "ADMIN_TOKEN",
    "HTTP_HOST",
    "HTTP_PORT",
    "CHANNEL_NAMESPACE",
    "FAIL_PRODUCT_IDS",
    "LOG_LEVEL",
}
"""Settings a developer's shell may hold; a benchmark sets its own (defaults unless a scenario says)."""

STARTED_LINE = b"FastStream app started successfully"

_running: set[ServiceProc] = set()


class ServiceProc:
    def __init__(self, name: str, port: int, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.port = port
        self.env = env
        self.log_path = workdir / f"{name}-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, **overrides: str) -> None:
        inherited = {k: v for k, v in os.environ.items() if k.upper() not in SETTINGS_ENV}
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = spawn_service(self.name, self.port, {**inherited, **self.env, **overrides}, self.log_path)
        _running.add(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: …{self.log_tail()}")

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def rss(self) -> int | None:
        return rss_bytes(self.proc.pid) if self.alive() and self.proc is not None else None

    def stop(self) -> None:
        _running.discard(self)
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    async def wait_ready(self, http: httpx.AsyncClient, timeout: float = 60.0, interval: float = 0.05) -> float:
        """Poll GET /ready until 200; returns the monotonic time it first answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if (await http.get(self.base + "/ready", timeout=2.0)).status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            await asyncio.sleep(interval)
        raise TimeoutError(f"{self.name} on :{self.port} not ready after {timeout:.0f}s: …{self.log_tail()}")

    def _started(self) -> bool:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return STARTED_LINE in log.read()
        except OSError:
            return False

    async def wait_started(self, timeout: float = 60.0) -> float:
        """Wait until FastStream logged that the app started (every subscriber running, after-startup
        hooks such as the outbox relay done), which on Kafka can be well after /ready answers 200."""
        deadline = time.monotonic() + timeout
        while not self._started():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} on :{self.port} not started after {timeout:.0f}s: …{self.log_tail()}")
            await asyncio.sleep(0.05)
        return time.monotonic()

    async def metric(self, http: httpx.AsyncClient, name: str, **labels: str) -> float | None:
        response = await http.get(self.base + "/metrics", timeout=10.0)
        response.raise_for_status()
        return metric_value(response.text, name, **labels)

    async def set_stock(self, http: httpx.AsyncClient, products: tuple[str, ...] = PRODUCTS) -> None:
        for product in products:
            response = await http.put(
                f"{self.base}/inventory/{product}",
                json={"available": STOCK_PER_PRODUCT},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=10.0,
            )
            if response.status_code != 200:
                raise RuntimeError(f"PUT /inventory/{product}: {response.status_code} {response.text[:200]}")


def stop_all() -> None:
    """Stop every service process still running (on errors, timeouts, Ctrl-C)."""
    for proc in list(_running):
        proc.stop()


def service_env(broker: str, ns: str, data_dir: Path, log_level: str, **extra: Any) -> dict[str, str]:
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
