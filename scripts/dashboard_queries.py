"""The PromQL of every panel target of a Grafana dashboard, ready for plain Prometheus.

`dashboard_queries(path)` returns `(panel title, expr)` for every target that has an
`expr`, with the dashboard's variables replaced: `$broker` (all spellings) by `.*`
(or by the `broker` argument, e.g. `nats`) and `$__rate_interval` by `1m`. Tests
evaluate these against a real Prometheus.

    python scripts/dashboard_queries.py [DASHBOARD.json] [--broker nats] [--prometheus http://localhost:9090]

prints the queries; with `--prometheus` it also runs each one (instant query) and
exits 1 if any fails or returns no series.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_DASHBOARD = Path(__file__).resolve().parent.parent / "compose" / "grafana" / "dashboards" / "switchboard.json"

# Longest spellings first, so `${broker}` is not half-replaced by `$broker`.
RATE_INTERVAL = ("${__rate_interval}", "$__rate_interval")
BROKER_VARIABLE = ("${broker:regex}", "${broker}", "[[broker]]", "$broker")
ALL_BROKERS = ".*"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def substitute(expr: str, broker: str = ALL_BROKERS) -> str:
    """`expr` with `$__rate_interval` → `1m` and `$broker` → `broker` (a label regex)."""
    for variable in RATE_INTERVAL:
        expr = expr.replace(variable, "1m")
    for variable in BROKER_VARIABLE:
        expr = expr.replace(variable, broker)
    return expr


def dashboard_queries(path: str | Path = DEFAULT_DASHBOARD, broker: str = ALL_BROKERS) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of the dashboard at `path`, variables substituted.

    `broker` replaces `$broker`: `.*` (the dashboard's "All") or one label value,
    `kafka`, `rabbitmq` or `nats`.
    """
    dashboard = json.loads(Path(path).read_text(encoding="utf-8"))
    dashboard = dashboard.get("dashboard", dashboard)  # also accept an API export wrapper
    queries: list[tuple[str, str]] = []
    for panel in _panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr:
                queries.append((panel.get("title", ""), substitute(expr, broker)))
    return queries


def evaluate(prometheus_url: str, expr: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Run `expr` as an instant query; returns the result vector (raises on an API error)."""
    url = prometheus_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dashboard", nargs="?", default=str(DEFAULT_DASHBOARD))
    parser.add_argument("--broker", default=ALL_BROKERS, help="value for $broker (default .*, all brokers)")
    parser.add_argument("--prometheus", help="base URL; evaluate every query there")
    args = parser.parse_args(argv)
    failed = 0
    for title, expr in dashboard_queries(args.dashboard, args.broker):
        if not args.prometheus:
            print(f"{title}\n    {expr}")
            continue
        try:
            series = len(evaluate(args.prometheus, expr))
        except Exception as exc:  # noqa: BLE001 - report every query, then fail
            series, error = 0, f"{type(exc).__name__}: {exc}"
        else:
            error = "" if series else "no data"
        failed += bool(error)
        print(
            f"{'FAIL' if error else 'ok  '} {series:3d} series  {title}\n    {expr}"
            + (f"\n    {error}" if error else "")
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
