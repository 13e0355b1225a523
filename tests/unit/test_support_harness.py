"""The test and benchmark harness (`tests.support`): port blocks for any broker name, and raw
clients found by broker name, built in or registered as entry points (no broker needed)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from tests.support import raw
from tests.support.raw import ENTRY_POINT_GROUP, KafkaRaw, RawClient, RawMessage, raw_client
from tests.support.system import BASE_PORT, PortBlocks


class FakeRaw(RawClient):
    """A plugin's raw client: the tests' part only."""

    name = "fake"
    DEFAULT_URL = "fake://localhost"

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, channel: str, body: bytes, key: str | None = None) -> None: ...

    async def tap(self, channel: str) -> Any:
        return channel

    async def tapped(self, token: Any) -> list[RawMessage]:  # noqa: ARG002
        return []

    async def dead_letters(self, channel: str) -> list[RawMessage]:  # noqa: ARG002
        return []


NOT_A_CLIENT = object()


def registry(*registered: EntryPoint) -> Callable[..., list[EntryPoint]]:
    """`importlib.metadata.entry_points` as if only `registered` were installed."""

    def entry_points(group: str, name: str | None = None) -> list[EntryPoint]:
        return [e for e in registered if e.group == group and name in (None, e.name)]

    return entry_points


def test_known_brokers_keep_their_port_blocks_and_redis_has_the_fourth() -> None:
    assert {b: BASE_PORT[b] for b in ("kafka", "rabbit", "nats", "redis")} == {
        "kafka": 18080,
        "rabbit": 18180,
        "nats": 18280,
        "redis": 18380,
    }


@pytest.mark.parametrize("broker", ["pulsar", "sqs", "memory", "x"])
def test_any_other_broker_gets_a_deterministic_block_apart_from_the_known_ones(broker: str) -> None:
    blocks = BASE_PORT
    first = blocks[broker]
    assert first == blocks[broker] == PortBlocks(blocks.known, blocks.size, blocks.spare)[broker]
    assert first in blocks.spare
    assert first + blocks.size - 1 in blocks.spare
    taken = [range(start, start + blocks.size) for start in blocks.known.values()]
    assert all(port not in block for block in taken for port in range(first, first + blocks.size))


async def test_the_built_in_raw_clients_are_found_by_name() -> None:  # aiokafka wants a running loop
    client = raw_client("kafka")
    assert isinstance(client, KafkaRaw)
    assert client.url == KafkaRaw.DEFAULT_URL


def test_another_broker_s_raw_client_is_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    registered = [EntryPoint("fake", f"{__name__}:FakeRaw", ENTRY_POINT_GROUP)]
    monkeypatch.setattr(raw, "entry_points", registry(*registered))

    client = raw_client("fake")

    assert isinstance(client, FakeRaw)
    assert client.url == "fake://localhost"
    assert "fake" in raw.known_brokers()


def test_an_entry_point_that_is_no_raw_client_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    registered = [EntryPoint("odd", f"{__name__}:NOT_A_CLIENT", ENTRY_POINT_GROUP)]
    monkeypatch.setattr(raw, "entry_points", registry(*registered))
    with pytest.raises(TypeError, match="not a RawClient subclass"):
        raw_client("odd")


def test_an_unknown_broker_names_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raw, "entry_points", registry())
    with pytest.raises(LookupError, match=r"no raw client for broker 'nope'; known: kafka, nats, rabbit"):
        raw_client("nope")
