"""Lag gauges and the "can every consumed channel be read" answer behind /ready."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from brokers.model import CHANNEL_CHECK_S, LAG_REFRESH_S

if TYPE_CHECKING:
    from brokers.interface import Lag
    from brokers.metrics import DeliveryMetrics
    from brokers.model import Subscription

log = logging.getLogger("switchboard.delivery")


class LagReporter:
    """Asks the broker's `Lag` part, at most once per LAG_REFRESH_S / CHANNEL_CHECK_S however
    often /metrics and /ready are polled: each probe costs broker round trips."""

    def __init__(self, lag: Lag, metrics: DeliveryMetrics) -> None:
        self._lag = lag
        self._metrics = metrics
        self.subscriptions: list[Subscription] = []
        self.watched: dict[tuple[str, str], None] = {}
        self._lag_refreshed_at = float("-inf")
        self._channels_checked_at = float("-inf")
        self._channels_available = True

    def subscribed(self, sub: Subscription) -> None:
        self.subscriptions.append(sub)
        self._metrics.touch(sub.channel, sub.consumer)
        self.watch(sub.channel, sub.consumer)

    def watch(self, channel: str, consumer: str) -> None:
        """Report `consumer_lag_messages` for `consumer` on `channel`, even if another process consumes."""
        self.watched[(channel, consumer)] = None

    async def consumed_channels_available(self, within_s: float) -> bool:
        """Whether every subscribed channel can be read now: every subscriber receives and the
        broker answers the lag of each subscription within `within_s` (a partition, stream or
        queue without a leader does not). The answer is kept for CHANNEL_CHECK_S."""
        if not self._lag.consuming():
            return False
        now = time.monotonic()
        if now - self._channels_checked_at < CHANNEL_CHECK_S:
            return self._channels_available
        self._channels_checked_at = now
        try:
            async with asyncio.timeout(within_s):
                lags = [await self._lag.consumer_lag(sub.channel, sub.consumer) for sub in self.subscriptions]
            self._channels_available = None not in lags
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            log.debug("a consumed channel is unavailable: %s", exc)
            self._channels_available = False
        return self._channels_available

    async def refresh(self) -> None:
        """Update the lag gauges (at most once per LAG_REFRESH_S)."""
        now = time.monotonic()
        if now - self._lag_refreshed_at < LAG_REFRESH_S:
            return
        self._lag_refreshed_at = now
        for channel, consumer in self.watched:
            try:
                waiting = await self._lag.consumer_lag(channel, consumer)
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail on a broker hiccup
                log.debug("lag of %s/%s unavailable: %s", channel, consumer, exc)
                continue
            if waiting is not None:
                self._metrics.set_lag(channel, consumer, waiting)
