"""Runs the services as real processes (`faststream run services.<name>:app`): the one
service-process helper of the tests and the benchmarks (`bench` imports it; tests never import `bench`).

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
import sys
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[2]
FASTSTREAM = str(Path(sys.executable).parent / "faststream")
SERVICES = ("order", "inventory", "payment", "notification")
ADMIN_TOKEN = "test-admin-token"
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
STARTED_LINE = b"FastStream app started successfully"
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
"""Settings a developer's shell may hold: a `ServiceProcess(…, inherit_settings=False)` (the
benchmarks') does not pass them on, it sets its own (defaults unless its env says)."""

T = TypeVar("T")


class PortBlocks(Mapping[str, int]):
    """The first port of each broker's block of `size` HTTP ports. The known brokers have theirs;
    any other name gets a block of `spare`, the same in every process (from a hash of the name), never
    one of the known brokers' (two unknown names may share one: a taken port is refused at start)."""

    def __init__(self, known: Mapping[str, int], size: int, spare: range) -> None:
        self.known = dict(known)
        self.size = size
        self.spare = spare
        if len(spare) < size:
            raise ValueError(f"spare ports {spare} hold no block of {size}")

    def __getitem__(self, broker: str) -> int:
        if broker in self.known:
            return self.known[broker]
        blocks = len(self.spare) // self.size
        return self.spare.start + self.size * (zlib.crc32(broker.encode()) % blocks)

    def __iter__(self) -> Iterator[str]:
        return iter(self.known)

    def __len__(self) -> int:
        return len(self.known)


BASE_PORT = PortBlocks(
    {"kafka": 18080, "rabbit": 18180, "nats": 18280, "redis": 18380}, size=100, spare=range(18480, 28000)
)
"""HTTP ports of the tests' services: a block of 100 per broker (suites use offsets +0 … +80 in it)."""


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
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def brokers_script(*args: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "brokers.sh"), *args], check=True, cwd=ROOT)


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


def sample_sum(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of `name` (Prometheus text) whose labels include `labels`; None if there is none."""
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


_running: set[ServiceProcess] = set()


class ServiceProcess:
    """One `faststream run services.<name>:app` process on `port`, logging to `workdir/<log_name>`
    (default `<name>.log`). Its environment: this process's (without SETTINGS_ENV unless
    `inherit_settings`), then `env`, then `start`'s overrides."""

    def __init__(
        self,
        name: str,
        port: int,
        env: dict[str, str],
        workdir: Path,
        *,
        log_name: str | None = None,
        inherit_settings: bool = True,
    ) -> None:
        self.name = name
        self.port = port
        self.env = env
        self.log_path = workdir / (log_name or f"{name}.log")
        self.inherit_settings = inherit_settings
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, **overrides: str) -> None:
        inherited = {k: v for k, v in os.environ.items() if self.inherit_settings or k.upper() not in SETTINGS_ENV}
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = spawn_service(self.name, self.port, {**inherited, **self.env, **overrides}, self.log_path)
        _running.add(self)

    def stop(self) -> None:
        """SIGTERM, and SIGKILL after STOP_TIMEOUT_S."""
        _running.discard(self)
        if self.proc is not None:
            terminate(self.proc)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no graceful stop, nothing flushed or acknowledged on the way out."""
        _running.discard(self)
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

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

    def log_lines(self, needle: str, *, since_start: bool = False) -> list[tuple[datetime, str]]:
        """(timestamp, line) of every log line containing `needle`; `since_start`: only those the
        running process wrote (a short read while the whole log grows)."""
        found = []
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset if since_start else 0)
            text = log.read().decode(errors="replace")
        for line in text.splitlines():
            if needle in line and (m := LOG_TIME.match(line)):
                found.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), line))
        return found

    def rss(self) -> int | None:
        return rss_bytes(self.proc.pid) if self.alive() and self.proc is not None else None

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
        hooks such as the outbox relay done), which on Kafka can be well after /ready answers 200.
        Returns the monotonic time it saw the line."""
        deadline = time.monotonic() + timeout
        while not self._started():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} on :{self.port} not started after {timeout:.0f}s: …{self.log_tail()}")
            await asyncio.sleep(0.05)
        return time.monotonic()

    async def metric(self, http: httpx.AsyncClient, name: str, **labels: str) -> float | None:
        """`sample_sum` of `name` on the service's /metrics."""
        response = await http.get(self.base + "/metrics", timeout=10.0)
        response.raise_for_status()
        return sample_sum(response.text, name, **labels)

    async def set_stock(self, http: httpx.AsyncClient, products: Iterable[str], available: int, token: str) -> None:
        """PUT /inventory/<product> (the inventory service's admin route) for each product."""
        for product in products:
            response = await http.put(
                f"{self.base}/inventory/{product}",
                json={"available": available},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10.0,
            )
            if response.status_code != 200:
                raise RuntimeError(f"PUT /inventory/{product}: {response.status_code} {response.text[:200]}")


def stop_all() -> None:
    """Stop every service process still running (on errors, timeouts, Ctrl-C)."""
    for proc in list(_running):
        proc.stop()


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
        # idle connections are dropped before the services close them (their keep-alive timeout is
        # 5 s, httpx's default expiry too): a request on a connection the server is closing fails
        self.http = httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(keepalive_expiry=2.0))

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
