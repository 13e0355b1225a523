"""Several replicas of each service on one broker cluster and one PostgreSQL database."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.cluster.cluster import Cluster
from tests.support.system import ADMIN_TOKEN, ServiceProcess, eventually, free_port, uid

REPLICAS = {"order": 2, "inventory": 2, "payment": 1, "notification": 1}
PORTS = range(18400, 18600)


class Replicas:
    """`REPLICAS` processes per service, each with its own port and log file."""

    def __init__(self, cluster: Cluster, database_url: str, workdir: Path) -> None:
        self.cluster = cluster
        self.database_url = database_url
        self.namespace = uid(f"c{cluster.broker[0]}")
        self.killed_node: int | None = None
        env = {
            "BROKER": cluster.broker,
            "BROKER_URL": cluster.url,
            "DATABASE_URL": database_url,
            "CHANNEL_NAMESPACE": self.namespace,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "RETRY_MAX_ATTEMPTS": "3",
            "RETRY_DELAY_MS": "400",
            "LOG_LEVEL": "INFO",
        }
        self._ports: set[int] = set()
        self.processes: dict[str, list[ServiceProcess]] = {}
        for name, count in REPLICAS.items():
            self.processes[name] = []
            for i in range(count):
                folder = workdir / f"{name}-{i}"
                folder.mkdir(parents=True, exist_ok=True)
                self.processes[name].append(ServiceProcess(name, self._port(), env, folder))
        self.http = httpx.AsyncClient(timeout=10.0)

    def _port(self) -> int:
        """A free port no other replica of this system was given (nothing listens on them yet, so
        `free_port` alone could hand out one twice)."""
        while (port := free_port(PORTS)) in self._ports:
            pass
        self._ports.add(port)
        return port

    def channel(self, name: str) -> str:
        return f"{self.namespace}.{name}"

    def url(self, process: ServiceProcess, path: str) -> str:
        return f"http://127.0.0.1:{process.port}{path}"

    def order_url(self, turn: int, path: str) -> str:
        """An order replica's URL, taking turns between the running ones."""
        running = [p for p in self.processes["order"] if p.proc is not None]
        return self.url(running[turn % len(running)], path)

    async def start(self) -> None:
        # one replica of each service first: the first start provisions the channels
        firsts = [replicas[0] for replicas in self.processes.values()]
        for process in firsts:
            process.start()
        await asyncio.gather(*(self.wait_ready(p) for p in firsts))
        rest = [p for replicas in self.processes.values() for p in replicas[1:]]
        for process in rest:
            process.start()
        await asyncio.gather(*(self.wait_ready(p) for p in rest))

    async def wait_ready(self, process: ServiceProcess, timeout: float = 90.0) -> None:
        async def probe() -> int:
            if process.proc is not None and process.proc.poll() is not None:
                raise AssertionError(f"{process.name} exited: {process.log_path.read_text()[-3000:]}")
            return (await self.http.get(self.url(process, "/ready"))).status_code

        await eventually(probe, lambda s: s == 200, timeout=timeout, what=f"{process.name}:{process.port} /ready")

    async def wait_all_ready(self) -> None:
        running = [p for replicas in self.processes.values() for p in replicas if p.proc is not None]
        await asyncio.gather(*(self.wait_ready(p, timeout=60) for p in running))

    def kill(self, name: str, index: int) -> None:
        self.processes[name][index].kill()

    async def set_stock(self, product_id: str, available: int) -> None:
        inventory = self.processes["inventory"][0]
        r = await self.http.put(
            self.url(inventory, f"/inventory/{product_id}"),
            json={"available": available},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert r.status_code == 200, r.text

    async def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                return list(conn.execute(sql, params).fetchall())

        return await asyncio.to_thread(run)

    async def statuses(self, order_ids: list[str]) -> dict[str, str]:
        rows = await self.query("SELECT order_id, status FROM order_orders WHERE order_id = ANY(%s)", order_ids)
        return {order_id: status for order_id, status in rows}

    async def aclose(self) -> None:
        for replicas in self.processes.values():
            for process in replicas:
                process.stop()
        await self.http.aclose()
