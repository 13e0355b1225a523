"""Foreign clients of other stacks against the running system: builds them once per session.

Each test module selects its broker with a session-scoped `broker` parametrization (see
`only_on`), so the `system` and `raw` fixtures of tests/conftest.py start that broker's system.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import BROKERS
from tests.foreign import clients
from tests.support.system import BASE_PORT, System

PORT_OFFSET = 70
"""The foreign suite's services listen at BASE_PORT + 70.. (other suites use +0, +50, +60, +80)."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "foreign: interoperability with clients of other stacks (Java, Go CLI)")


def only_on(broker: str) -> pytest.MarkDecorator:
    """Run a module's tests on `broker` only (none when TEST_BROKERS leaves it out)."""
    return pytest.mark.parametrize("broker", [b for b in BROKERS if b == broker], scope="session")


@pytest.fixture(scope="session", autouse=True)
def foreign_clients(brokers_running: None) -> None:  # noqa: ARG001 - the brokers must run too
    """The Spring Kafka / RabbitMQ Java jar and the nats CLI, built (or found cached) under .local/."""
    clients.build()


@pytest.fixture(scope="session")
async def system(broker: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    """tests/conftest.py's system on ports of this suite's own, so it may run beside the contract suite."""
    sys_ = System(broker, tmp_path_factory.mktemp(f"foreign-{broker}"), port_base=BASE_PORT[broker] + PORT_OFFSET)
    try:
        await sys_.start()
        yield sys_
    finally:
        await sys_.aclose()
