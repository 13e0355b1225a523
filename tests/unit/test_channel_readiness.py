"""`Transport.consumed_channels_available`, behind /ready's `channels` field."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from brokers import Subscription, create_transport
from brokers.base import Transport
from config import Settings


async def _nothing(_: object) -> None:
    pass


def _transport(monkeypatch: pytest.MonkeyPatch, lag: object) -> Transport:
    transport = create_transport(Settings(broker="nats"), CollectorRegistry(), app_name="t")
    transport.subscriptions.append(Subscription("order-events", "inventory-service", _nothing, dict))

    async def consumer_lag(_channel: str, _consumer: str) -> int | None:
        if isinstance(lag, BaseException):
            raise lag
        if lag == "hang":
            await asyncio.sleep(10)
        return lag  # type: ignore[return-value]

    monkeypatch.setattr(transport, "consumer_lag", consumer_lag)
    return transport


async def test_available_when_every_lag_is_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _transport(monkeypatch, 0).consumed_channels_available(1.0)


@pytest.mark.parametrize("lag", [None, ConnectionError("no leader"), "hang"])
async def test_unavailable_when_a_lag_is_unknown_fails_or_hangs(monkeypatch: pytest.MonkeyPatch, lag: object) -> None:
    assert not await _transport(monkeypatch, lag).consumed_channels_available(0.05)


async def test_the_answer_is_kept_between_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = _transport(monkeypatch, None)
    assert not await transport.consumed_channels_available(0.05)
    monkeypatch.setattr(transport, "consumer_lag", lambda *_: asyncio.sleep(0, result=0))
    assert not await transport.consumed_channels_available(0.05)  # within CHANNEL_CHECK_S: not asked again
    transport._channels_checked_at = float("-inf")
    assert await transport.consumed_channels_available(0.05)
