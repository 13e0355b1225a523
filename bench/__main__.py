"""`python -m bench`: throughput, latency and memory of the services on each real broker.

Per broker, in one run (each scenario in its own channel namespace, time-limited):

1. raw     – raw clients: produce N events durably, consume them back from the backlog, and
             relay them (consume → publish one durable outcome each → ack after the confirm):
             the relay is the end-to-end ceiling of the consumer path, which does the same
             broker work per message
2. consumer– inventory consumer path on a preloaded backlog of N OrderCreated
3. ingest  – POST /orders load (wrk, else a Python generator): orders/s accepted, all published?
4. latency – POST → InventoryReserved at a fixed rate: p50/p99/max
5. failing – as 2 with 10 % of the orders for FAIL (RETRY_DELAY_MS=200): healthy throughput
6. RSS of every service process at the end of each scenario

Prints a table per broker with the targets marked and writes artifacts/bench-<timestamp>.json.
The brokers must be running (`scripts/brokers.sh start all`; `make bench` does it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import jsonable, namespace, run_on_uvloop, spread
from bench.load import have_wrk
from bench.scenarios import SCENARIOS, Ctx
from tests.support.raw import BenchClient, known_brokers, raw_client
from tests.support.system import ROOT, PortBlocks, stop_all

PORT_BASE = PortBlocks(
    {"kafka": 28300, "rabbit": 28330, "nats": 28360, "redis": 28390}, size=30, spare=range(28420, 29020)
)
"""HTTP ports of the services a benchmark starts: 30 per broker from 28300 (kafka, rabbit, nats,
redis: 28300-28419), any other broker a block of 28420-29019 (see docs/benchmarks.md)."""

ORDER = ("raw", "consumer", "failing", "ingest", "latency")
TARGETS = {
    "consumer": 0.50,  # consumer path ≥ 50 % of the raw end-to-end ceiling (the relay)
    "ingest": 2000.0,  # accepted orders/s
    "latency": 50.0,  # p99 ms at the fixed rate (500/s by default)
    "failing": 0.85,  # healthy throughput with 10 % failing ≥ 85 % of all-healthy
}
CLEANUP_TIMEOUT_S = 20.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--brokers",
        default="kafka,rabbit,nats",
        help="comma-separated: kafka,rabbit,nats (or a broker whose raw client is registered in switchboard.test_clients)",
    )
    p.add_argument(
        "--events", type=int, default=20000, help="backlog size N for raw, consumer and failing (default 20000)"
    )
    p.add_argument("--repeat", type=int, default=1, help="run every scenario R times; the table shows median (min–max)")
    p.add_argument("--rate", type=float, default=500, help="orders/s for the latency scenario (default 500)")
    p.add_argument("--duration", type=float, default=10, help="seconds of load in the latency scenario (default 10)")
    p.add_argument(
        "--ingest-duration", type=float, default=10, help="seconds of load in the ingest scenario (default 10)"
    )
    p.add_argument(
        "--ingest-connections", type=int, default=32, help="keep-alive connections of the ingest load (default 32)"
    )
    p.add_argument(
        "--fail-ratio", type=float, default=0.10, help="share of FAIL orders in the failing scenario (default 0.10)"
    )
    p.add_argument(
        "--failing-retry-delay-ms", type=int, default=200, help="RETRY_DELAY_MS in the failing scenario (default 200)"
    )
    p.add_argument(
        "--load-tool",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="HTTP ingest load: wrk if installed (auto)",
    )
    p.add_argument("--scenarios", default=",".join(ORDER), help=f"subset of {','.join(ORDER)}")
    p.add_argument("--timeout", type=float, default=120, help="time limit of each scenario in seconds (default 120)")
    p.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the services (default INFO, as in production)")
    p.add_argument("--out", default=str(ROOT / "artifacts"), help="directory of the JSON report (default artifacts/)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the services' logs and SQLite files")
    args = p.parse_args(argv)
    if args.load_tool == "auto":
        args.load_tool = "wrk" if have_wrk() else "python"
    elif args.load_tool == "wrk" and not have_wrk():
        p.error("--load-tool wrk: wrk is not installed (apt-get install wrk)")
    args.broker_list = [b.strip() for b in args.brokers.split(",") if b.strip()]
    args.scenario_list = [s for s in ORDER if s in {x.strip() for x in args.scenarios.split(",")}]
    brokers = known_brokers()
    unknown = set(args.broker_list) - set(brokers)
    if unknown or not args.broker_list:
        p.error(f"--brokers: unknown {sorted(unknown)}; valid: {','.join(brokers)}")
    if not args.scenario_list:
        p.error(f"--scenarios: none of {','.join(ORDER)}")
    if args.events < 1 or args.repeat < 1 or args.rate <= 0 or args.duration <= 0 or not 0 <= args.fail_ratio < 1:
        p.error("--events, --repeat, --rate, --duration must be positive and --fail-ratio in [0, 1)")
    return args


def _ports(broker: str) -> Any:
    base = PORT_BASE[broker]
    while True:
        yield from range(base, base + 30)


async def run_scenario(name: str, ctx: Ctx) -> dict[str, Any]:
    ns = namespace(ctx.broker, name)
    progress: dict[str, Any] = {"namespace": ns}
    started = time.monotonic()
    print(f"  [{ctx.broker}] {name} … ", end="", flush=True)
    try:
        async with asyncio.timeout(ctx.timeout):
            await SCENARIOS[name](ctx, ns, progress)
        progress["status"] = "ok"
    except TimeoutError:
        progress["status"] = "timeout"
    except Exception as exc:  # noqa: BLE001 - a failed scenario is reported, the others still run
        progress["status"] = "error"
        progress["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        for proc in ctx.procs:
            proc.stop()
        ctx.procs.clear()
        try:
            await asyncio.wait_for(ctx.raw.delete_namespace(ns), CLEANUP_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort
            progress["cleanup_error"] = f"{type(exc).__name__}: {exc}"[:300]
    progress["wall_s"] = time.monotonic() - started
    print(f"{progress['status']} ({progress['wall_s']:.1f}s){headline(name, progress)}", flush=True)
    if progress["status"] == "error":
        print(f"      {progress['error'][:600]}", flush=True)
    return progress


def headline(name: str, r: dict[str, Any]) -> str:
    def f(key: str, unit: str = "") -> str:
        v = r.get(key)
        return f"{v:,.0f}{unit}" if isinstance(v, int | float) else "–"

    if name == "raw":
        return (
            f": produce {f('produce_msg_s', ' msg/s')}, consume {f('consume_msg_s', ' msg/s')},"
            f" relay {f('relay_steady_msg_s', ' msg/s')}"
        )
    if name in ("consumer", "failing"):
        partial = f", {f('partial_msg_s', ' msg/s')} so far" if r.get("status") == "timeout" else ""
        return f": {f('msg_s', ' msg/s')} ({r.get('handled', 0)}/{r.get('expected_outputs', '?')} handled{partial})"
    if name == "ingest":
        return f": {f('accepted_per_s', '/s')} accepted, published {r.get('published', '–')}/{r.get('accepted', '–')}"
    if name == "latency":
        return (
            f": p50 {r.get('p50_ms') or 0:.1f} ms, p99 {r.get('p99_ms') or 0:.1f} ms, missing {r.get('missing', '–')}"
        )
    return ""


async def run_broker(broker: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    raw = raw_client(broker)
    if not isinstance(raw, BenchClient):
        return {"error": f"the raw client of {broker} ({type(raw).__name__}) is no BenchClient", "runs": []}
    try:
        await asyncio.wait_for(raw.connect(), 20)
    except Exception as exc:  # noqa: BLE001 - an unreachable broker is reported, the others still run
        with contextlib.suppress(Exception):
            await raw.close()
        return {"error": f"broker not reachable: {type(exc).__name__}: {exc}", "runs": []}
    runs: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient() as http:
            ctx = Ctx(
                broker=broker,
                raw=raw,
                http=http,
                workdir=workdir / broker,
                events=args.events,
                rate=args.rate,
                duration=args.duration,
                ingest_duration=args.ingest_duration,
                ingest_connections=args.ingest_connections,
                fail_ratio=args.fail_ratio,
                failing_retry_delay_ms=args.failing_retry_delay_ms,
                log_level=args.log_level,
                timeout=args.timeout,
                load_tool=args.load_tool,
                ports=_ports(broker),
            )
            ctx.workdir.mkdir(parents=True, exist_ok=True)
            for rep in range(args.repeat):
                run: dict[str, Any] = {"repeat": rep + 1}
                for name in args.scenario_list:
                    run[name] = await run_scenario(name, ctx)
                runs.append(run)
    finally:
        await raw.close()
    return {"runs": runs}


# --------------------------------------------------------------------------- summary and verdicts
FIGURES = {
    "raw": [
        "produce_msg_s",
        "consume_msg_s",
        "consume_steady_msg_s",
        "relay_msg_s",
        "relay_first_last_msg_s",
        "relay_steady_msg_s",
    ],
    "consumer": [
        "msg_s",
        "steady_msg_s",
        "first_last_msg_s",
        "start_to_ready_s",
        "first_output_after_ready_s",
        "ready_to_started_s",
    ],
    "failing": [
        "msg_s",
        "steady_msg_s",
        "first_last_msg_s",
        "first_output_after_ready_s",
        "all_failing_dead_lettered_after_ready_s",
    ],
    "ingest": ["accepted_per_s", "published_per_s", "drained_after_load_s"],
    "latency": ["p50_ms", "p99_ms", "max_ms", "http_p99_ms", "achieved_rate"],
}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for scenario, keys in FIGURES.items():
        ok = [r[scenario] for r in runs if r.get(scenario, {}).get("status") == "ok"]
        statuses = [r[scenario]["status"] for r in runs if scenario in r]
        if not statuses:
            continue
        entry: dict[str, Any] = {"statuses": statuses}
        for key in keys:
            entry[key] = spread([r.get(key) for r in ok])
        rss: dict[str, list[float]] = {}
        for r in ok:
            for service, value in (r.get("rss_mib") or {}).items():
                rss.setdefault(service, []).append(value)
        entry["rss_mib"] = {s: spread(v) for s, v in rss.items()}
        if scenario == "ingest":
            entry["verified"] = all(r.get("verified") for r in ok) if ok else None
        if scenario == "latency":
            entry["missing"] = sum(r.get("missing", 0) for r in ok)
        summary[scenario] = entry
    return summary


def med(summary: dict[str, Any], scenario: str, key: str) -> float | None:
    value = summary.get(scenario, {}).get(key)
    return value["median"] if value else None


def _steady_or_overall(summary: dict[str, Any], scenario: str) -> float | None:
    steady = med(summary, scenario, "steady_msg_s")
    return steady if steady is not None else med(summary, scenario, "msg_s")


BURSTY_RATIO = 1.2
"""Steady above first → last by more than this: the outputs came in a burst (e.g. a relay that
fell behind and caught up at the end), and the steady window overstates the sustained rate."""


def _bursty(summary: dict[str, Any], scenario: str) -> str:
    steady = med(summary, scenario, "steady_msg_s")
    first_last = med(summary, scenario, "first_last_msg_s")
    if steady and first_last and steady > BURSTY_RATIO * first_last:
        return "bursty: steady overstates"
    return ""


def verdicts(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    raw_consume = med(summary, "raw", "consume_msg_s")
    raw_relay = med(summary, "raw", "relay_steady_msg_s")  # steady, as the consumer path's rate
    # steady rates (first → last output): on Kafka the service consumes while its subscribers
    # are still joining, before /ready, which would flatter a rate counted from /ready
    consumer = _steady_or_overall(summary, "consumer")
    if consumer is not None and raw_relay:
        ratio = consumer / raw_relay
        out["consumer"] = {
            "ratio": ratio,
            "ratio_to_consume": consumer / raw_consume if raw_consume else None,
            "target": "≥ 50 % of the raw relay (end to end)",
            "pass": ratio >= TARGETS["consumer"],
        }
    ingest = med(summary, "ingest", "accepted_per_s")
    if ingest is not None:
        verified = summary["ingest"].get("verified")
        out["ingest"] = {
            "value": ingest,
            "target": "≥ 2000 orders/s, all published",
            "pass": ingest >= TARGETS["ingest"] and bool(verified),
        }
        raw_produce = med(summary, "raw", "produce_msg_s")
        if raw_produce:
            out["ingest"]["ratio"] = ingest / raw_produce
    p99 = med(summary, "latency", "p99_ms")
    if p99 is not None:
        missing = summary["latency"].get("missing", 0)
        out["latency"] = {
            "value": p99,
            "target": "p99 < 50 ms, none missing",
            "pass": p99 < TARGETS["latency"] and not missing,
        }
    failing = _steady_or_overall(summary, "failing")
    if failing is not None and consumer:
        ratio = failing / consumer
        out["failing"] = {"ratio": ratio, "target": "≥ 85 % of all-healthy", "pass": ratio >= TARGETS["failing"]}
    return out


def _fmt(entry: dict[str, Any] | None, unit: str = "", digits: int = 0) -> str:
    if not entry:
        return "–"
    text = f"{entry['median']:,.{digits}f}{unit}"
    if entry["n"] > 1:
        text += f" ({entry['min']:,.{digits}f}–{entry['max']:,.{digits}f})"
    return text


def _status(summary: dict[str, Any], scenario: str) -> str:
    statuses = summary.get(scenario, {}).get("statuses", [])
    bad = [s for s in statuses if s != "ok"]
    return f" [{', '.join(bad)}]" if bad else ""


def _mark(v: dict[str, Any] | None, summary: dict[str, Any], scenario: str) -> str:
    statuses = summary.get(scenario, {}).get("statuses", [])
    if v is None:
        if not statuses:
            return "not run"
        return "TIMEOUT" if "timeout" in statuses else "ERROR" if "error" in statuses else "n/a"
    return "PASS" if v["pass"] else "FAIL"


def table(broker: str, result: dict[str, Any], args: argparse.Namespace) -> str:
    if result.get("error"):
        return f"\n== {broker} ==\n  {result['error']}\n"
    s, v = result["summary"], result["verdicts"]
    rows: list[tuple[str, str, str, str, str]] = []

    def pct(x: float | None) -> str:
        if x is None:
            return ""
        return f"{100 * x:.1f} %" if x < 0.1 else f"{100 * x:.0f} %"

    if "raw" in s:
        rows.append(
            ("raw produce (durable)" + _status(s, "raw"), _fmt(s["raw"]["produce_msg_s"], " msg/s"), "", "", "")
        )
        rows.append(("raw consume only", _fmt(s["raw"]["consume_msg_s"], " msg/s"), "", "", ""))
        rows.append(("  steady (first→last)", _fmt(s["raw"]["consume_steady_msg_s"], " msg/s"), "", "", ""))
        rows.append(("raw relay = end-to-end ceiling", _fmt(s["raw"]["relay_steady_msg_s"], " msg/s"), "", "", ""))
        rows.append(("  first → last", _fmt(s["raw"]["relay_first_last_msg_s"], " msg/s"), "", "", ""))
        rows.append(("  incl. connect and join", _fmt(s["raw"]["relay_msg_s"], " msg/s"), "", "", ""))
    if "consumer" in s:
        c = v.get("consumer")
        rows.append(
            (
                "inventory consumer path, steady*" + _status(s, "consumer"),
                _fmt(s["consumer"]["steady_msg_s"], " msg/s"),
                pct(c["ratio"]) + " of relay" if c else "",
                "≥ 50 % of relay",
                _mark(c, s, "consumer"),
            )
        )
        if c and c.get("ratio_to_consume"):
            rows.append(("  vs raw consume only", "", pct(c["ratio_to_consume"]), "", ""))
        rows.append(
            ("  first → last output", _fmt(s["consumer"]["first_last_msg_s"], " msg/s"), _bursty(s, "consumer"), "", "")
        )
        rows.append(("  from /ready to lag 0", _fmt(s["consumer"]["msg_s"], " msg/s"), "", "", ""))
        rows.append(("  ready → first output", _fmt(s["consumer"]["first_output_after_ready_s"], " s", 2), "", "", ""))
    if "ingest" in s:
        i = v.get("ingest")
        rows.append(
            (
                "HTTP ingest, 202/s" + _status(s, "ingest"),
                _fmt(s["ingest"]["accepted_per_s"], " /s"),
                pct(i.get("ratio")) + " of raw prod." if i and i.get("ratio") else "",
                "≥ 2000/s",
                _mark(i, s, "ingest"),
            )
        )
        verified = s["ingest"].get("verified")
        rows.append(("  all published (OrderCreated)", {True: "yes", False: "NO", None: "–"}[verified], "", "", ""))
    if "latency" in s:
        lat = v.get("latency")
        val = f"p50 {_fmt(s['latency']['p50_ms'], ' ms', 1)} · p99 {_fmt(s['latency']['p99_ms'], ' ms', 1)}"
        rows.append(
            (
                f"POST→RESERVED @ {args.rate:g}/s" + _status(s, "latency"),
                val,
                "",
                "p99 < 50 ms",
                _mark(lat, s, "latency"),
            )
        )
        rows.append(
            (
                "  max · missing",
                f"{_fmt(s['latency']['max_ms'], ' ms', 1)} · {s['latency'].get('missing', '–')}",
                "",
                "",
                "",
            )
        )
    if "failing" in s:
        f = v.get("failing")
        rows.append(
            (
                f"{args.fail_ratio:.0%} failing: healthy msg/s, steady*" + _status(s, "failing"),
                _fmt(s["failing"]["steady_msg_s"], " msg/s"),
                pct(f["ratio"]) + " of healthy" if f else "",
                "≥ 85 % of healthy",
                _mark(f, s, "failing"),
            )
        )
        rows.append(
            ("  first → last output", _fmt(s["failing"]["first_last_msg_s"], " msg/s"), _bursty(s, "failing"), "", "")
        )
        rows.append(("  from /ready to lag 0", _fmt(s["failing"]["msg_s"], " msg/s"), "", "", ""))
    for scenario in ("consumer", "ingest", "latency", "failing"):
        rss = s.get(scenario, {}).get("rss_mib") or {}
        if rss:
            text = " · ".join(f"{svc} {_fmt(val, ' MiB', 1)}" for svc, val in rss.items())
            rows.append((f"RSS after {scenario}", text, "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    header = f"\n== {broker}  (N={args.events}, repeat {args.repeat}) =="
    lines = [header]
    for r in rows:
        lines.append("  " + "  ".join(col.ljust(widths[i]) for i, col in enumerate(r)).rstrip())
    lines.append("  * steady = over the middle 80 % of the outputs (10th to 90th percentile of arrival times)")
    return "\n".join(lines)


def _git() -> dict[str, Any]:
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


async def amain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for broker in args.broker_list:
        print(f"{broker}:", flush=True)
        result = await run_broker(broker, args, workdir)
        result["summary"] = summarize(result["runs"])
        result["verdicts"] = verdicts(result["summary"])
        results[broker] = result
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    started = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    print(
        f"bench: brokers {','.join(args.broker_list)} · scenarios {','.join(args.scenario_list)} · N={args.events} · "
        f"repeat {args.repeat} · ingest load via {args.load_tool} · workdir {workdir}",
        flush=True,
    )

    def on_term(*_: Any) -> None:
        stop_all()
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    try:
        results = run_on_uvloop(amain(args, workdir))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items() if k not in ("broker_list", "scenario_list")},
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "git": _git(),
        "targets": TARGETS,
        "brokers": results,
    }
    for broker, result in results.items():
        print(table(broker, result, args))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(jsonable(report), indent=2, ensure_ascii=False) + "\n")
    print(f"\nJSON: {path}" + (f"\nservice logs kept in {workdir}" if args.keep_workdir else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
