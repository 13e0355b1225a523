"""README "Metrics": a real Prometheus scrapes the four services and every dashboard panel has data.

A Prometheus server (Debian's `prometheus`, installed by `scripts/brokers.sh install
prometheus`) runs with the root `prometheus.yml` rewritten for this test: the same job
name and metrics path, the targets moved to this system's service ports, a 1 s scrape
interval and its storage in a temporary directory. Once it scrapes all four targets and
has seen healthy and dead-lettered orders, every PromQL expression of the Grafana
dashboard (`compose/grafana/dashboards/switchboard.json`, `$broker` set to this broker's
label) must return series, and each rate() panel a positive value.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.dashboard_queries import DEFAULT_DASHBOARD, dashboard_queries
from tests.support.system import (
    ROOT,
    SERVICES,
    System,
    brokers_script,
    eventually,
    free_port,
    metric_value,
    terminate,
    uid,
)

pytestmark = pytest.mark.contract

PORTS = range(28290, 28300)
SCRAPE_INTERVAL = "1s"
QUERY_DEADLINE_S = 60.0
TRAFFIC_TIMEOUT_S = 60.0  # a fresh Kafka system takes ~20 s for its first order (group joins)
# The `broker` label value of each BROKER setting (docs/contract.md, "Metrics").
BROKER_LABEL = {"kafka": "kafka", "rabbit": "rabbitmq", "nats": "nats", "redis": "redis"}
# The root prometheus.yml scrapes each service at its contract default port.
DEFAULT_PORT = {8080 + i: name for i, name in enumerate(SERVICES)}
OUR_METRICS = ("retry_attempts_total", "dead_letter_topic_messages_total", "consumer_lag_messages")


@dataclass
class Prometheus:
    url: str
    job: str
    metrics_path: str
    targets: dict[str, str]  # service -> host:port
    log_path: Path
    proc: subprocess.Popen[bytes]

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def scrape_config_for(system: System) -> tuple[dict[str, Any], dict[str, str]]:
    """The root prometheus.yml with its targets moved to `system`'s ports and a 1 s interval."""
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text(encoding="utf-8"))
    [job] = config["scrape_configs"]  # the root file has the one job that scrapes the four services
    targets: dict[str, str] = {}
    for static in job["static_configs"]:
        moved = []
        for target in static["targets"]:
            service = DEFAULT_PORT[int(target.rpartition(":")[2])]
            assert static.get("labels", {}).get("service", service) == service, static
            moved.append(targets.setdefault(service, f"127.0.0.1:{system.services[service].port}"))
        static["targets"] = moved
    assert set(targets) == set(SERVICES), f"prometheus.yml does not scrape every service: {sorted(targets)}"
    config.setdefault("global", {}).update(scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
    job.update(scrape_interval=SCRAPE_INTERVAL, scrape_timeout=SCRAPE_INTERVAL)
    return config, targets


def launch(binary: str, workdir: Path, config: dict[str, Any], port: int) -> tuple[subprocess.Popen[bytes], Path]:
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    log_path = workdir / "prometheus.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, log_path


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Install Prometheus if missing (idempotent); skip only when it is neither there nor installable."""
    try:
        brokers_script("install", "prometheus")
    except subprocess.CalledProcessError as exc:
        if not shutil.which("prometheus"):
            if os.environ.get("CI"):
                raise
            pytest.skip(f"prometheus is not installed and `scripts/brokers.sh install prometheus` failed: {exc}")
    binary = shutil.which("prometheus")
    assert binary, "scripts/brokers.sh install prometheus succeeded but no prometheus on PATH"
    return binary


@pytest.fixture
async def prometheus(
    system: System, prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Prometheus]:
    config, targets = scrape_config_for(system)
    [job] = config["scrape_configs"]
    port = free_port(PORTS)
    proc, log_path = launch(prometheus_binary, tmp_path_factory.mktemp(f"prometheus-{system.broker}"), config, port)
    prom = Prometheus(
        url=f"http://127.0.0.1:{port}",
        job=job["job_name"],
        metrics_path=job.get("metrics_path", "/metrics"),
        targets=targets,
        log_path=log_path,
        proc=proc,
    )
    try:

        async def ready() -> int:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {proc.returncode}: {prom.log_tail()}")
            return (await system.http.get(f"{prom.url}/-/ready")).status_code

        await eventually(ready, lambda status: status == 200, timeout=60, what="prometheus /-/ready")
        yield prom
    finally:
        terminate(proc)


async def query(system: System, prom: Prometheus, expr: str) -> list[dict[str, Any]]:
    r = await system.http.get(f"{prom.url}/api/v1/query", params={"query": expr})
    body = r.json()
    assert body.get("status") == "success", f"{expr}: {body}"
    return body["data"]["result"]


async def drive_traffic(system: System) -> None:
    """A healthy order (publish, consume, processed) and one dead-lettered after retries."""
    labels = {
        "broker": BROKER_LABEL[system.broker],
        "destination": system.channel("order-events"),
        "consumer": "inventory-service",
    }
    before = await system.metrics("inventory")
    product, healthy, failing = uid("P"), uid("prom-ok"), uid("prom-fail")
    await system.set_stock(product, 5)

    assert (await system.post_order({"orderId": healthy, "productId": product, "quantity": 1})).status_code == 202
    assert (await system.post_order({"orderId": failing, "productId": "FAIL", "quantity": 1})).status_code == 202

    await system.wait_status(healthy, {"CONFIRMED"}, timeout=TRAFFIC_TIMEOUT_S)

    def dead_lettered(text: str) -> float:
        return metric_value(text, "dead_letter_topic_messages_total", reason="exhausted", **labels)

    await eventually(
        lambda: system.metrics("inventory"),
        lambda text: dead_lettered(text) > dead_lettered(before),
        timeout=TRAFFIC_TIMEOUT_S,
        what=f"{failing} dead-lettered after its retries",
    )


async def scraped_since(system: System, prom: Prometheus, since: float) -> None:
    """Wait until Prometheus holds a sample of every target taken after `since` (Unix time)."""
    await eventually(
        lambda: query(system, prom, f'timestamp(up{{job="{prom.job}"}})'),
        lambda result: len(result) == len(SERVICES) and all(float(s["value"][1]) > since for s in result),
        timeout=30,
        what="a scrape of every target after the traffic",
    )


def shows_data(expr: str, result: list[dict[str, Any]]) -> bool:
    """Some series; for a rate() panel also a positive value (a graph, not a flat zero or NaN)."""
    if "rate(" not in expr:
        return bool(result)
    return any(math.isfinite(v := float(s["value"][1])) and v > 0 for s in result)


async def test_prometheus_scrapes_every_service_and_every_dashboard_panel_has_data(
    system: System, prometheus: Prometheus
) -> None:
    started = time.monotonic()

    # Traffic in two rounds: the first creates every series (while Prometheus finds its
    # targets), a scrape records them, and the second round's increases fall inside the
    # rate() windows (the first sample of a series has no increase before it).
    async def targets() -> list[dict[str, Any]]:
        r = await system.http.get(f"{prometheus.url}/api/v1/targets", params={"state": "active"})
        return r.json()["data"]["activeTargets"]

    expected = {f"http://{address}{prometheus.metrics_path}" for address in prometheus.targets.values()}
    active, _ = await asyncio.gather(
        eventually(
            targets,
            lambda ts: {t["scrapeUrl"] for t in ts} == expected and all(t["health"] == "up" for t in ts),
            timeout=30,
            what="all four targets up",
        ),
        drive_traffic(system),
    )
    # Every target of the job is scraped, at this system's ports and the root file's path.
    assert {t["labels"]["job"] for t in active} == {prometheus.job}
    assert {t["labels"].get("service") for t in active} == set(SERVICES)
    first_round = time.monotonic()

    await scraped_since(system, prometheus, time.time())
    await drive_traffic(system)
    traffic_done = time.monotonic()

    # Our metrics carry this broker's label and only it (one system, one broker per Prometheus).
    brokers = await query(system, prometheus, f'count by (broker) ({{__name__=~"{"|".join(OUR_METRICS)}"}})')
    assert [s["metric"].get("broker") for s in brokers] == [BROKER_LABEL[system.broker]], brokers

    # Every panel's expression returns data; rate() needs two scrapes inside its window.
    queries = dashboard_queries(DEFAULT_DASHBOARD, broker=BROKER_LABEL[system.broker])
    assert queries, f"no PromQL found in {DEFAULT_DASHBOARD}"
    pending = list(queries)

    async def without_data() -> list[tuple[str, str]]:
        pending[:] = [(t, expr) for t, expr in pending if not shows_data(expr, await query(system, prometheus, expr))]
        return pending

    await eventually(
        without_data, lambda still: not still, timeout=QUERY_DEADLINE_S, what="data in every dashboard query"
    )
    print(
        f"{len(queries)} dashboard queries have data on {system.broker}: targets up and first "
        f"round after {first_round - started:.1f}s, second round {traffic_done - first_round:.1f}s, "
        f"queries {time.monotonic() - traffic_done:.1f}s"
    )
