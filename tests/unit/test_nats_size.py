"""NATS size guard: what the server counts against `max_payload`, the refusal before sending, the
exit when the server closes the connection (nats-py never reconnects after a server error), and
pull loops that back off instead of spinning."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import ConnectionClosedError, MaxPayloadError
from prometheus_client import CollectorRegistry

from brokers import Transport, create_transport
from brokers.nats import CONNECTION_LOST_EXIT, check_size, wire_size
from brokers.nats.connection import NatsConnection
from brokers.nats.dead_letters import NatsDeadLetters
from brokers.nats.lifecycle import NatsLifecycle
from config import Settings


async def sent_size(body: bytes, headers: dict[str, str]) -> int:
    """The total size nats-py announces to the server in its HPUB command (headers + body)."""
    client = Client()
    sent: list[bytes] = []

    async def capture(command: bytes, priority: bool = False) -> None:  # noqa: ARG001
        sent.append(command)

    client._send_command = capture  # type: ignore[method-assign,assignment]
    await client._send_publish("subject", "", body, len(body), headers)
    return int(sent[0].split(b"\r\n", 1)[0].split()[-1])


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-exception-message": "boom " * 50, "traceparent": "00-abc-def-01"}, {"k": "välue"}],
)
async def test_wire_size_is_what_nats_py_sends(headers: dict[str, str]) -> None:
    body = b"b" * 1000
    if not headers:
        assert wire_size(body, headers) == len(body)
    else:
        assert wire_size(body, headers) == await sent_size(body, headers)


class _Connection:
    max_payload = 1000


def test_a_publish_over_max_payload_with_its_headers_is_refused() -> None:
    headers = {"x-exception-message": "m" * 100}
    body = b"b" * (1000 - wire_size(b"", headers))
    check_size(_Connection(), body, headers)  # exactly the limit
    with pytest.raises(MaxPayloadError):
        check_size(_Connection(), body + b"b", headers)


def nats_transport() -> Transport:
    transport = create_transport(Settings(broker="nats"), CollectorRegistry(), app_name="t")
    assert transport.label == "nats"
    return transport


def connection(transport: Transport) -> NatsConnection:
    lifecycle = transport.parts.lifecycle
    assert isinstance(lifecycle, NatsLifecycle)
    return lifecycle.conn


async def test_a_connection_closed_by_the_server_ends_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr("brokers.nats.connection.os._exit", exits.append)
    transport = nats_transport()
    transport.broker.running = True
    await connection(transport).on_connection_closed()
    assert exits == [CONNECTION_LOST_EXIT]


async def test_a_stop_we_asked_for_does_not_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[Any] = []
    monkeypatch.setattr("brokers.nats.connection.os._exit", exits.append)
    transport = nats_transport()
    await connection(transport).on_connection_closed()  # not running: a CLI, or after broker.stop()
    transport.broker.running = True
    await transport.parts.consumer.drain(transport.settled)  # SIGTERM: draining before the broker stops
    await connection(transport).on_connection_closed()
    await asyncio.sleep(0)
    assert exits == []


async def test_a_dead_letter_listener_backs_off_when_it_cannot_pull() -> None:
    """FastStream's own loop retried a closed connection's immediate error without ever yielding."""
    transport = nats_transport()

    async def listener(_: Any) -> None:
        return None

    transport.listen_dead_letters("ch", "c", listener)
    dead_letters = transport.parts.dead_letters
    assert isinstance(dead_letters, NatsDeadLetters)
    [pull] = dead_letters.listeners
    pulls: list[float] = []

    class ClosedSubscription:
        async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ARG002
            pulls.append(time.monotonic())
            raise ConnectionClosedError

    pull.subscription = ClosedSubscription()
    pull.subscriber.running = True
    turns = 0

    async def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0.01)

    others = asyncio.create_task(other_work())
    loop = asyncio.create_task(pull.pull_loop())
    await asyncio.sleep(0.8)
    pull.subscriber.running = False
    loop.cancel()
    others.cancel()
    assert 1 <= len(pulls) <= 3  # 0.5 s, then 1 s between pulls
    assert turns > 20  # the event loop kept serving other work
