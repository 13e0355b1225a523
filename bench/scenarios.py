"""The benchmark scenarios. Each gets a fresh channel namespace and data directory,
starts only the services it needs on ports 28300-28399, stops them in `finally`, and
keeps its figures in `progress` as it goes (so a timeout still reports how far it got).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import ADMIN_TOKEN, PRODUCTS, STOCK_PER_PRODUCT, mib, order_backlog, percentile, rate, service_env
from bench.load import order_body, run_python_load, run_wrk
from tests.support.raw import RAW_CHANNEL, RAW_OUT_CHANNEL, BenchClient
from tests.support.system import ServiceProcess

RESERVED = "InventoryReserved"
REJECTED = "InventoryRejected"
CREATED = "OrderCreated"
POLL_S = 0.02
METRICS_EVERY_S = 2.0
LATENCY_GRACE_S = 30.0
WARMUP_ORDERS = 20


@dataclass
class Ctx:
    broker: str
    raw: BenchClient
    http: httpx.AsyncClient
    workdir: Path
    events: int
    rate: float
    duration: float
    ingest_duration: float
    ingest_connections: int
    fail_ratio: float
    failing_retry_delay_ms: int
    log_level: str
    timeout: float
    load_tool: str
    ports: Iterator[int]
    procs: list[ServiceProcess] = field(default_factory=list)

    def service(self, name: str, ns: str, **env: Any) -> ServiceProcess:
        data = self.workdir / ns / "data"
        data.mkdir(parents=True, exist_ok=True)
        port = next(self.ports)
        proc = ServiceProcess(
            name,
            port,
            service_env(self.broker, ns, data, self.log_level, **env),
            self.workdir / ns,
            log_name=f"{name}-{port}.log",
            inherit_settings=False,
        )
        self.procs.append(proc)
        return proc

    async def started(self, *procs: ServiceProcess) -> float | None:
        """Wait until every proc logged FastStream's start line (only logged at INFO or below)."""
        if self.log_level.upper() not in ("DEBUG", "INFO"):
            return None
        return max([await proc.wait_started() for proc in procs])


Scenario = Callable[[Ctx, str, dict[str, Any]], Awaitable[None]]


async def _until(
    condition: Callable[[], bool], procs: list[ServiceProcess], on_tick: Callable[[], Awaitable[None]] | None = None
) -> float:
    """Wait (bounded by the scenario's timeout) until `condition()`; returns the monotonic time it held."""
    next_tick = time.monotonic() + METRICS_EVERY_S
    while not condition():
        for proc in procs:
            proc.check_alive()
        if on_tick is not None and time.monotonic() >= next_tick:
            next_tick = time.monotonic() + METRICS_EVERY_S
            await on_tick()
        await asyncio.sleep(POLL_S)
    return time.monotonic()


def _first_to_last(times: list[float]) -> float | None:
    """Rate between the first and the last arrival (excludes the process start, not the warm-up)."""
    if len(times) < 2:
        return None
    return rate(len(times) - 1, max(times) - min(times))


def _steady(times: list[float]) -> float | None:
    """Rate over the middle 80 % of the arrivals (10th to 90th percentile): the steady state,
    without the warm-up (on Kafka, group rebalances while the service's subscribers join) and
    the tail."""
    if len(times) < 10:
        return _first_to_last(times)
    ordered = sorted(times)
    low, high = len(ordered) // 10, len(ordered) * 9 // 10
    return rate(high - low, ordered[high] - ordered[low])


# --------------------------------------------------------------------------- 1. raw ceiling
async def raw_ceiling(ctx: Ctx, ns: str, progress: dict[str, Any]) -> None:
    channel = f"{ns}.{RAW_CHANNEL}"
    items, _ = order_backlog("r", ctx.events)
    progress["events"] = len(items)
    progress["body_bytes_avg"] = round(sum(len(b) for _, b in items) / len(items), 1)
    await ctx.raw.create_raw_channel(channel)
    progress["produce_s"] = await ctx.raw.produce(channel, items)
    progress["produce_msg_s"] = rate(len(items), progress["produce_s"])
    result = await ctx.raw.consume(channel, len(items))
    progress.update(
        consumed=result.count,
        consume_s=result.seconds,
        consume_first_s=result.first_s,
        consume_msg_s=rate(result.count, result.seconds),
        consume_steady_msg_s=rate(result.count, result.steady_seconds),
    )
    relayed = await ctx.raw.relay(channel, f"{ns}.{RAW_OUT_CHANNEL}", len(items))
    progress.update(
        relayed=relayed.count,
        relay_s=relayed.seconds,
        relay_msg_s=rate(relayed.count, relayed.seconds),
        relay_first_last_msg_s=rate(relayed.count, relayed.steady_seconds),
        relay_steady_msg_s=relayed.middle_rate(),
    )


# --------------------------------------------------------------------------- 2 + 5. preloaded backlog
async def _backlog(ctx: Ctx, ns: str, progress: dict[str, Any], fail_ratio: float, retry_delay_ms: int) -> None:
    inventory = ctx.service("inventory", ns, RETRY_DELAY_MS=retry_delay_ms)
    order_channel, out_channel = f"{ns}.order-events", f"{ns}.inventory-events"
    # first start: the service declares its channels, queue and durable consumer; stock is set
    inventory.start()
    await inventory.wait_ready(ctx.http)
    await inventory.set_stock(ctx.http, PRODUCTS, STOCK_PER_PRODUCT, ADMIN_TOKEN)
    inventory.stop()

    tap = await ctx.raw.watch(out_channel)
    started: asyncio.Task[float | None] | None = None
    try:
        items, failing = order_backlog("o", ctx.events, fail_ratio)
        expected = len(items) - failing
        progress.update(events=len(items), failing=failing, expected_outputs=expected, retry_delay_ms=retry_delay_ms)
        progress["preload_msg_s"] = rate(len(items), await ctx.raw.produce(order_channel, items))

        spawned = time.monotonic()
        inventory.start()
        ready = await inventory.wait_ready(ctx.http)
        progress["start_to_ready_s"] = ready - spawned
        started = asyncio.create_task(ctx.started(inventory))
        lag_labels = {"destination": order_channel, "consumer": "inventory-service"}

        async def tick() -> None:
            progress["handled"] = tap.count(RESERVED) + tap.count(REJECTED)
            progress["elapsed_s"] = time.monotonic() - ready
            progress["partial_msg_s"] = rate(progress["handled"], progress["elapsed_s"])
            progress["lag"] = await inventory.metric(ctx.http, "consumer_lag_messages", **lag_labels)

        outputs_done = await _until(lambda: tap.count(RESERVED) + tap.count(REJECTED) >= expected, [inventory], tick)
        lag = await inventory.metric(ctx.http, "consumer_lag_messages", **lag_labels)
        done = outputs_done
        while lag is not None and lag != 0:  # the source must be acknowledged too (Kafka: committed)
            inventory.check_alive()
            await asyncio.sleep(0.1)
            lag = await inventory.metric(ctx.http, "consumer_lag_messages", **lag_labels)
            done = time.monotonic()
        reserved = tap.times(RESERVED)
        progress.update(
            handled=tap.count(RESERVED) + tap.count(REJECTED),
            reserved=tap.count(RESERVED),
            rejected=tap.count(REJECTED),
            duplicates_seen=tap.duplicates,
            seconds=done - ready,
            lag_zero_after_outputs_s=done - outputs_done,
            msg_s=rate(expected, done - ready),
            steady_msg_s=_steady(reserved),
            first_last_msg_s=_first_to_last(reserved),
            first_output_after_ready_s=(min(reserved) - ready) if reserved else None,
        )
        if started.done() and not started.cancelled() and started.exception() is None and started.result():
            progress["ready_to_started_s"] = started.result() - ready
        if failing:
            dlt_labels = {"destination": order_channel, "consumer": "inventory-service", "reason": "exhausted"}
            dead = 0.0

            async def dead_lettered() -> None:
                nonlocal dead
                dead = await inventory.metric(ctx.http, "dead_letter_topic_messages_total", **dlt_labels) or 0.0
                progress["dead_lettered"] = dead

            await dead_lettered()
            while dead < failing:
                inventory.check_alive()
                await asyncio.sleep(0.25)
                await dead_lettered()
            progress["all_failing_dead_lettered_after_ready_s"] = time.monotonic() - ready
            progress["retries"] = await inventory.metric(ctx.http, "retry_attempts_total", **lag_labels)
        progress["rss_mib"] = {"inventory": mib(inventory.rss())}
    finally:
        if started is not None:
            started.cancel()
        await tap.close()


async def consumer_path(ctx: Ctx, ns: str, progress: dict[str, Any]) -> None:
    await _backlog(ctx, ns, progress, 0.0, 2000)


async def failing_path(ctx: Ctx, ns: str, progress: dict[str, Any]) -> None:
    await _backlog(ctx, ns, progress, ctx.fail_ratio, ctx.failing_retry_delay_ms)


# --------------------------------------------------------------------------- 3. HTTP ingest
async def http_ingest(ctx: Ctx, ns: str, progress: dict[str, Any]) -> None:
    order = ctx.service("order", ns)
    order.start()
    await order.wait_ready(ctx.http)
    await ctx.started(order)
    tap = await ctx.raw.watch(f"{ns}.order-events")
    try:
        prefix = f"{ns}-in"
        progress.update(connections=ctx.ingest_connections, load_s=ctx.ingest_duration)
        load_start = time.monotonic()
        if ctx.load_tool == "wrk":
            result = await run_wrk(order.base, ctx.ingest_connections, ctx.ingest_duration, prefix, len(PRODUCTS))
        else:
            out = ctx.workdir / ns / "ingest.json"
            args = ["closed", "--url", order.base, "--duration", str(ctx.ingest_duration)]
            args += ["--connections", str(ctx.ingest_connections), "--prefix", prefix, "--out", str(out)]
            result = await run_python_load(args, ctx.ingest_duration + 90)
        load_end = time.monotonic()
        accepted = int(result["accepted"])
        answered = sum(n for status, n in result["status"].items() if status != "-1")
        unanswered = int(result["generated"]) - answered  # in flight when the load stopped, or timed out
        progress.update(
            tool=result["tool"],
            requests=result["requests"],
            http_status=result["status"],
            errors=result.get("errors"),
            http_latency_ms=result.get("latency_ms"),
            accepted=accepted,
            unanswered=unanswered,
            accepted_per_s=rate(accepted, result["duration_s"]),
            rss_mib_after_load={"order": mib(order.rss())},
        )

        async def tick() -> None:
            progress["published"] = tap.count(CREATED, prefix)

        drained = await _until(lambda: tap.count(CREATED, prefix) >= accepted, [order], tick)
        # requests unanswered when the load stopped may still be stored and published: wait for
        # them until the count is still for a second
        settle_until, seen = time.monotonic() + 1.0, tap.count(CREATED, prefix)
        while seen < accepted + unanswered and time.monotonic() < settle_until:
            await asyncio.sleep(0.1)
            if tap.count(CREATED, prefix) != seen:
                seen, settle_until = tap.count(CREATED, prefix), time.monotonic() + 1.0
        published = tap.count(CREATED, prefix)
        progress.update(
            published=published,
            published_beyond_accepted=published - accepted,
            duplicates_seen=tap.duplicates,
            verified=accepted <= published <= accepted + unanswered and tap.duplicates == 0,
            drained_after_load_s=drained - load_end,
            published_per_s=rate(published, drained - load_start),
            rss_mib={"order": mib(order.rss())},
        )
    finally:
        await tap.close()


# --------------------------------------------------------------------------- 4. POST → RESERVED latency
async def latency(ctx: Ctx, ns: str, progress: dict[str, Any]) -> None:
    inventory = ctx.service("inventory", ns)
    order = ctx.service("order", ns)
    inventory.start()
    order.start()
    await inventory.wait_ready(ctx.http)
    await order.wait_ready(ctx.http)
    await ctx.started(inventory, order)
    await inventory.set_stock(ctx.http, PRODUCTS, STOCK_PER_PRODUCT, ADMIN_TOKEN)
    tap = await ctx.raw.watch(f"{ns}.inventory-events")
    procs = [inventory, order]
    try:
        warm = f"{ns}-warm"
        for i in range(WARMUP_ORDERS):
            r = await ctx.http.post(
                order.base + "/orders",
                content=order_body(f"{warm}-{i}", i, len(PRODUCTS)),
                headers={"Content-Type": "application/json"},
                timeout=10.0,
            )
            if r.status_code != 202:
                raise RuntimeError(f"warm-up POST /orders: {r.status_code} {r.text[:200]}")
        await _until(lambda: tap.count(RESERVED, warm) >= WARMUP_ORDERS, procs)

        prefix = f"{ns}-lat"
        out = ctx.workdir / ns / "latency.json"
        args = ["rate", "--url", order.base, "--rate", str(ctx.rate), "--duration", str(ctx.duration)]
        args += ["--connections", "32", "--prefix", prefix, "--out", str(out)]
        progress.update(rate=ctx.rate, duration_s=ctx.duration)
        result = await run_python_load(args, ctx.duration + 90)
        load_end = time.monotonic()
        records: dict[str, list[float]] = result["records"]
        accepted = {oid: rec for oid, rec in records.items() if rec[3] == 202}
        progress.update(requested=result["requested"], accepted=len(accepted))
        arrivals = tap.arrivals.setdefault(RESERVED, {})
        deadline = load_end + LATENCY_GRACE_S
        await _until(lambda: all(oid in arrivals for oid in accepted) or time.monotonic() > deadline, procs)
        from_scheduled = [(arrivals[o] - rec[0]) * 1000 for o, rec in accepted.items() if o in arrivals]
        from_sent = [(arrivals[o] - rec[1]) * 1000 for o, rec in accepted.items() if o in arrivals]
        http_ms = [(rec[2] - rec[1]) * 1000 for rec in accepted.values()]
        send_lag_ms = [(rec[1] - rec[0]) * 1000 for rec in records.values()]
        scheduled = [rec[0] for rec in records.values()]
        progress.update(
            reserved=len(from_scheduled),
            missing=len(accepted) - len(from_scheduled),
            rejected=tap.count(REJECTED, prefix),
            achieved_rate=rate(len(records) - 1, max(scheduled) - min(scheduled)) if len(scheduled) > 1 else None,
            p50_ms=percentile(from_scheduled, 50),
            p99_ms=percentile(from_scheduled, 99),
            max_ms=max(from_scheduled, default=None),
            p99_from_sent_ms=percentile(from_sent, 99),
            http_p50_ms=percentile(http_ms, 50),
            http_p99_ms=percentile(http_ms, 99),
            generator_send_lag_p99_ms=percentile(send_lag_ms, 99),
            slow_orders_by_second=_slow_by_second(accepted, arrivals, percentile(from_scheduled, 99)),
            rss_mib={"inventory": mib(inventory.rss()), "order": mib(order.rss())},
        )
    finally:
        await tap.close()


def _slow_by_second(
    accepted: dict[str, list[float]], arrivals: dict[str, float], p99_ms: float | None
) -> dict[str, int]:
    """How many orders at or above the p99 were scheduled in each second of the run: one
    stall shows as one busy second, a broad tail as many."""
    if p99_ms is None or not accepted:
        return {}
    start = min(rec[0] for rec in accepted.values())
    slow: dict[str, int] = {}
    for order_id, rec in accepted.items():
        arrived = arrivals.get(order_id)
        if arrived is not None and (arrived - rec[0]) * 1000 >= p99_ms:
            second = str(int(rec[0] - start))
            slow[second] = slow.get(second, 0) + 1
    return dict(sorted(slow.items(), key=lambda kv: int(kv[0])))


SCENARIOS: dict[str, Scenario] = {
    "raw": raw_ceiling,
    "consumer": consumer_path,
    "failing": failing_path,
    "ingest": http_ingest,
    "latency": latency,
}
