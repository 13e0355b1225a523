"""`make fuzz`: schemathesis against the OpenAPI document of each of the four services.

    BROKER=rabbit .venv/bin/python scripts/fuzz.py                 # BROKER: kafka (default), rabbit, nats
    FUZZ_ARGS="--max-examples 20" .venv/bin/python scripts/fuzz.py  # extra `schemathesis run` options

Installs the pinned schemathesis into this venv when it is missing (not a dev dependency, so
`make test` never needs it), starts the four services on the running broker (`scripts/brokers.sh
start`, done by `make fuzz`) with a fresh channel namespace, data directory and admin token,
waits for each `/ready`, then runs `schemathesis run <service>/docs/openapi.json` with every
check, every phase and both data modes (valid and invalid), the admin token as a bearer header.
The services it started are stopped (by their process) whatever happens. Exit status 1 when any
service had a failure or error (each service's JSON and HAR reports are in `artifacts/fuzz/<broker>/`),
else 0; the last lines sum up requests, test cases and failures per service.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.system import SERVICES, System, port_free  # noqa: E402

SCHEMATHESIS_VERSION = "4.32.5"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CONFIG = ROOT / "scripts" / "fuzz.toml"
"""Which answers count as rejecting invalid data and as accepting valid data (413: see the file)."""
CACHE = ROOT / ".local" / "fuzz"
"""schemathesis's working directory: its cache (`.schemathesis/`, for `st replay <test case id>`)
stays there, out of the repository."""
BROKERS = ("kafka", "rabbit", "nats")
PORT_BASES = range(28200, 28290, len(SERVICES))
"""The four services get four consecutive ports of 28200-28289 (see `free_port_base`)."""
READY_TIMEOUT_S = 180.0
SCHEMATHESIS_OPTIONS = (
    "--checks=all",
    "--phases=examples,coverage,fuzzing,stateful",
    "--mode=all",
    "--request-timeout=30",
    "--suppress-health-check=too_slow",  # a loaded 2-core machine is slow; it is not what we test
    "--generation-database=none",  # examples kept from earlier runs cut the stateful phase short
)


@dataclass
class Result:
    service: str
    exit_code: int
    requests: int
    test_cases: int
    failures: int
    report: Path


def ensure_schemathesis() -> None:
    """Install the pinned schemathesis into this venv unless it is there already."""
    try:
        out = subprocess.run([str(SCHEMATHESIS), "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    if SCHEMATHESIS_VERSION in out.split():
        return
    print(f"fuzz: installing schemathesis {SCHEMATHESIS_VERSION} into {Path(sys.executable).parent.parent}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"schemathesis=={SCHEMATHESIS_VERSION}"], check=True)


def free_port_base() -> int:
    """The first base of PORT_BASES whose four ports nobody listens on."""
    for base in PORT_BASES:
        if all(port_free(base + i) for i in range(len(SERVICES))):
            return base
    raise RuntimeError(f"no four free ports in {PORT_BASES.start}-{PORT_BASES.stop - 1}")


def summarize(json_report: Path, har_report: Path) -> tuple[int, int, int]:
    """(requests, test cases, failures) of one service's run: its HAR log's entries, and the
    JSON report's generated test cases and unique failures (zeros for a missing report)."""
    try:
        counts: dict[str, Any] = json.loads(json_report.read_text())["test_cases"]
    except (OSError, ValueError, KeyError, TypeError):
        counts = {}
    try:
        requests = len(json.loads(har_report.read_text())["log"]["entries"])
    except (OSError, ValueError, KeyError, TypeError):
        requests = 0
    return requests, int(counts.get("generated", 0)), int(counts.get("unique_failures", 0))


def fuzz(service: str, base_url: str, config: Path, reports: Path, extra: list[str]) -> Result:
    report, har = reports / f"{service}.json", reports / f"{service}.har"
    command = [
        str(SCHEMATHESIS),
        f"--config-file={config}",
        "run",
        f"{base_url}/docs/openapi.json",
        *SCHEMATHESIS_OPTIONS,
        "--report=json,har",
        f"--report-json-path={report}",
        f"--report-har-path={har}",
        *extra,
    ]
    print(f"\nfuzz: {service}: {shlex.join(command)}", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    code = subprocess.run(command, cwd=CACHE, check=False).returncode
    return Result(service, code, *summarize(report, har), report)


async def run(broker: str, extra: list[str]) -> list[Result]:
    token = secrets.token_urlsafe(24)
    workdir = Path(tempfile.mkdtemp(prefix=f"switchboard-fuzz-{broker}-"))
    config = workdir / "schemathesis.toml"  # CONFIG plus the token as every request's bearer header
    config.write_text(f'headers = {{ Authorization = "Bearer {token}" }}\n\n{CONFIG.read_text()}')
    system = System(broker, workdir, port_base=free_port_base(), ADMIN_TOKEN=token)
    reports = ROOT / "artifacts" / "fuzz" / broker
    reports.mkdir(parents=True, exist_ok=True)
    print(f"fuzz: services on {broker}, namespace {system.namespace}, logs in {workdir}", flush=True)
    try:
        for name in SERVICES:
            system.services[name].start()
        for name in SERVICES:
            await system.wait_ready(name, timeout=READY_TIMEOUT_S)
        results = []
        for name in SERVICES:
            results.append(await asyncio.to_thread(fuzz, name, system.url(name, ""), config, reports, extra))
        return results
    finally:
        await system.aclose()


def main() -> int:
    broker = os.environ.get("BROKER", "kafka")
    if broker not in BROKERS:
        print(f"fuzz: BROKER={broker!r} is not supported; valid values are: {', '.join(BROKERS)}", file=sys.stderr)
        return 2
    ensure_schemathesis()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the services on SIGTERM too
    try:
        results = asyncio.run(run(broker, shlex.split(os.environ.get("FUZZ_ARGS", ""))))
    except KeyboardInterrupt:
        print("\nfuzz: interrupted; the services it started are stopped", file=sys.stderr)
        return 130
    day = datetime.now(UTC).date().isoformat()
    print(f"\nfuzz: {day}, schemathesis {SCHEMATHESIS_VERSION}, broker {broker}")
    for r in results:
        outcome = "ok" if r.exit_code == 0 else f"FAILED (exit {r.exit_code})"
        print(
            f"  {r.service:<13} {r.requests:>6} requests {r.test_cases:>6} test cases {r.failures:>3} failures  {outcome}"
        )
    return 0 if all(r.exit_code == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
