"""Fixtures: real brokers (started by scripts/brokers.sh) and the system on each.

`system` is parametrized over kafka, rabbit, nats and redis at session scope, so pytest
runs the whole contract suite once per broker against one set of four service
processes per broker. Tests isolate themselves by unique order and product ids;
the system's channels carry a per-run namespace.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator

import pytest

from tests.support.raw import RawClient, raw_client
from tests.support.system import ROOT, System, brokers_script, free_port

BROKERS = [b for b in os.environ.get("TEST_BROKERS", "kafka,rabbit,nats,redis").split(",") if b]


@pytest.fixture(scope="session")
def brokers_running() -> None:
    """Start every broker under test (idempotent: a running broker is left alone)."""
    if os.environ.get("SKIP_BROKER_START") != "1":
        brokers_script("start", *BROKERS)


@pytest.fixture(scope="session", params=BROKERS)
def broker(request: pytest.FixtureRequest, brokers_running: None) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
async def system(broker: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    sys_ = System(broker, tmp_path_factory.mktemp(f"system-{broker}"))
    try:
        await sys_.start()
        yield sys_
    finally:
        await sys_.aclose()


@pytest.fixture(scope="session")
async def raw(broker: str, brokers_running: None) -> AsyncIterator[RawClient]:
    client = raw_client(broker)
    await client.connect()
    yield client
    await client.close()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """Our PostgreSQL server's URL (no database); started on a free port if it is not running yet."""
    env = {**os.environ, "PG_PORT": str(free_port(range(55432, 55532)))}
    subprocess.run([str(ROOT / "scripts" / "postgres.sh"), "start"], check=True, env=env)
    out = subprocess.run([str(ROOT / "scripts" / "postgres.sh"), "url"], check=True, capture_output=True, text=True)
    return out.stdout.strip().rsplit("/", 1)[0]
