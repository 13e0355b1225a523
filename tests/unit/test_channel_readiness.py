"""`LagReporter.consumed_channels_available`, behind /ready's `channels` field (any transport's `Lag`)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from brokers import Subscription
from brokers.engine.readiness import LagReporter
from brokers.metrics import DeliveryMetrics


async def _nothing(_: object) -> None:
    pass


class FakeLag:
    """A `brokers.interface.Lag` answering `lag` (a number, None, an exception to raise, or "hang")."""

    def __init__(self, lag: object, *, consuming: bool = True) -> None:
        self.lag = lag
        self.asked = 0
        self._consuming = consuming

    async def consumer_lag(self, _channel: str, _consumer: str) -> int | None:
        self.asked += 1
        if isinstance(self.lag, BaseException):
            raise self.lag
        if self.lag == "hang":
            await asyncio.sleep(10)
        return self.lag  # type: ignore[return-value]

    def consuming(self) -> bool:
        return self._consuming


def _reporter(lag: FakeLag) -> LagReporter:
    reporter = LagReporter(lag, DeliveryMetrics(CollectorRegistry(), "fake"))
    reporter.subscribed(Subscription("order-events", "inventory-service", _nothing, dict))
    return reporter


async def test_available_when_every_lag_is_answered() -> None:
    assert await _reporter(FakeLag(0)).consumed_channels_available(1.0)


@pytest.mark.parametrize("lag", [None, ConnectionError("no leader"), "hang"])
async def test_unavailable_when_a_lag_is_unknown_fails_or_hangs(lag: object) -> None:
    assert not await _reporter(FakeLag(lag)).consumed_channels_available(0.05)


async def test_unavailable_while_a_subscriber_is_known_not_to_receive() -> None:
    assert not await _reporter(FakeLag(0, consuming=False)).consumed_channels_available(1.0)


async def test_the_answer_is_kept_between_checks() -> None:
    lag = FakeLag(None)
    reporter = _reporter(lag)
    assert not await reporter.consumed_channels_available(0.05)
    lag.lag = 0
    assert not await reporter.consumed_channels_available(0.05)  # within CHANNEL_CHECK_S: not asked again
    assert lag.asked == 1
