"""Services are built by their module's `create_service(settings)`, each call a new and independent
one; importing a service module builds nothing (no broker needed: nothing connects)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from config import Settings
from services import inventory, notification, order, payment
from services.runtime import Service

MODULES = [order, inventory, payment, notification]


def settings(tmp_path: Path, namespace: str) -> Settings:
    return Settings(broker="kafka", channel_namespace=namespace, data_dir=str(tmp_path / namespace))


def subscribed(service: Service) -> set[str]:
    return {sub.channel for sub in service.transport.subscriptions}


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_two_services_from_two_settings_are_independent(module: ModuleType, tmp_path: Path) -> None:
    first = module.create_service(settings(tmp_path, "ns-a"))
    second = module.create_service(settings(tmp_path, "ns-b"))

    assert first is not second
    channels = {channel.removeprefix("ns-a.") for channel in subscribed(first)}
    assert channels, "every service consumes a channel"
    assert subscribed(first) == {f"ns-a.{channel}" for channel in channels}
    assert subscribed(second) == {f"ns-b.{channel}" for channel in channels}
    assert first.db.url == f"sqlite:///{tmp_path}/ns-a/{first.name}.db"
    assert second.db.url == f"sqlite:///{tmp_path}/ns-b/{second.name}.db"
    for shared in ("settings", "transport", "db", "outbox", "registry", "api", "app"):
        assert getattr(first, shared) is not getattr(second, shared), shared
    # each has handlers of its own: no route of one serves the other
    first_endpoints = {id(r.endpoint) for r in first.api.routes}  # type: ignore[attr-defined]
    assert first_endpoints.isdisjoint(id(r.endpoint) for r in second.api.routes)  # type: ignore[attr-defined]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_create_app_builds_a_new_service_each_call(module: ModuleType, tmp_path: Path) -> None:
    one, two = module.create_app(settings(tmp_path, "ns-c")), module.create_app(settings(tmp_path, "ns-c"))
    assert one is not two


def test_importing_a_service_module_builds_nothing() -> None:
    script = (
        "from services import runtime\n"
        "def refuse(*args, **kwargs): raise AssertionError('a Service was built at import')\n"
        "runtime.Service.__init__ = refuse\n"
        "import services.order, services.inventory, services.payment, services.notification\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_module_service_and_app_are_built_once_from_the_process_settings() -> None:
    assert order.service is order.service
    assert order.app is order.service.app
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        order.nothing  # noqa: B018
