"""The transport conformance suite: every case runs on every registered transport
(`brokers.registry.names()`, or the comma-separated names in env TRANSPORTS). A transport whose
broker does not answer fails; a case is skipped only when a capability flag says so."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from brokers import registry
from tests.transport.harness import ALL_FLAGS, Harness

TRANSPORTS = [n.strip() for n in os.environ.get("TRANSPORTS", "").split(",") if n.strip()] or registry.names()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "transport: the transport conformance suite (tests/transport)")
    config.addinivalue_line("markers", "needs(flag): a case that only runs on transports with that capability flag")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/transport/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.transport)


@pytest.fixture(params=TRANSPORTS)
def transport_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def harness(transport_name: str, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    h = Harness(transport_name)
    for marker in request.node.iter_markers("needs"):
        assert set(marker.args) <= ALL_FLAGS, f"unknown capability flag in {marker}"
        missing = set(marker.args) - h.capabilities
        if missing:
            pytest.skip(f"{transport_name} lacks capability {', '.join(sorted(missing))}")
    try:
        yield h
    finally:
        await h.aclose()
