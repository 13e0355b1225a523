"""Connection and start-up provisioning (`brokers.interface.Lifecycle`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from brokers.engine.faststream import ping
from brokers.provisioning import log_outcomes
from brokers.rabbit.provision import declare_nothing

if TYPE_CHECKING:
    from brokers.provisioning import Provisioning
    from brokers.rabbit.channels import RabbitChannels
    from brokers.rabbit.connection import RabbitConnection

log = logging.getLogger("switchboard.rabbit")


class RabbitLifecycle:
    def __init__(self, state: RabbitConnection, channels: RabbitChannels, provisioning: Provisioning) -> None:
        self._state = state
        self._channels = channels
        self._provisioning = provisioning

    async def connect(self) -> None:
        await self._state.connect()

    async def start(self) -> None:
        """Provision what the service uses (`brokers.rabbit.provision`). PROVISION off: nothing, and
        FastStream's own declarations become passive: an operator provisioned."""
        await self._state.connect()  # the connection of a broker the service app connected
        if self._provisioning.enabled:
            log_outcomes(await self._channels.provision(), log)
        else:
            declare_nothing(self._state.broker)

    async def stop(self) -> None:
        """Nothing of its own: the publishing channel closes with the broker's connection."""

    async def ping(self, within_s: float) -> bool:
        return await ping(self._state.broker, within_s)
