"""brokers.kafka.groups.GroupWatch against a fake admin client and fake subscribers."""

from __future__ import annotations

from typing import Any

import pytest

from brokers.kafka import groups as kafka_groups
from brokers.kafka.groups import GroupWatch


class FakeSubscriber:
    def __init__(self) -> None:
        self.running = True
        self.consumer = None
        self.restarts = 0
        self.fail_start = False

    async def stop(self) -> None:
        self.running = False

    async def start(self) -> None:
        if self.fail_start:
            raise RuntimeError("InconsistentGroupProtocolError")
        self.running = True
        self.restarts += 1


class FakeResponse:
    def __init__(self, groups: dict[str, list[str]]) -> None:
        self.groups = groups

    def to_object(self) -> dict[str, Any]:
        return {
            "groups": [
                {"group": g, "members": [{"client_id": c} for c in clients]} for g, clients in self.groups.items()
            ]
        }


class FakeAdmin:
    def __init__(self) -> None:
        self.members: dict[str, list[str]] = {}

    async def describe_consumer_groups(self, groups: list[str]) -> list[FakeResponse]:
        return [FakeResponse({g: self.members.get(g, []) for g in groups})]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(kafka_groups.time, "monotonic", lambda: now[0])
    return now


async def test_a_subscriber_out_of_its_group_is_reported_then_restarted_with_backoff(clock: list[float]) -> None:
    admin = FakeAdmin()
    failures: list[tuple[str, str]] = []

    async def get_admin() -> Any:
        return admin

    watch = GroupWatch("me", get_admin, lambda d, c: failures.append((d, c)), grace_s=10)
    sub = FakeSubscriber()
    watch.watch("g", "order-events", "inventory-service", sub)

    admin.members = {"g": ["me", "foreign"]}
    await watch.check()
    assert watch.joined
    assert not failures

    admin.members = {"g": ["foreign"]}
    await watch.check()  # missing, but within the grace period
    assert watch.joined
    assert sub.restarts == 0
    clock[0] += 10
    sub.fail_start = True
    await watch.check()
    assert not watch.joined
    assert failures == [("order-events", "inventory-service")] * 2  # found out, then the restart failed
    clock[0] += 1
    await watch.check()  # within the backoff: no second attempt yet
    assert len(failures) == 2
    sub.fail_start = False
    clock[0] += kafka_groups.RESTART_BACKOFF_S[0]
    await watch.check()
    assert sub.restarts == 1
    assert not watch.joined
    admin.members = {"g": ["foreign", "me"]}
    await watch.check()
    assert watch.joined


async def test_one_member_of_ours_per_subscriber_is_enough(clock: list[float]) -> None:
    admin = FakeAdmin()

    async def get_admin() -> Any:
        return admin

    watch = GroupWatch("me", get_admin, lambda _d, _c: None, grace_s=0)
    first, second = FakeSubscriber(), FakeSubscriber()
    watch.watch("g", "a", "c", first)
    watch.watch("g", "b", "c", second)
    admin.members = {"g": ["me", "me"]}
    await watch.check()
    assert watch.joined
    admin.members = {"g": ["me"]}
    clock[0] += 1
    await watch.check()
    assert not watch.joined
    assert first.restarts == second.restarts == 1
