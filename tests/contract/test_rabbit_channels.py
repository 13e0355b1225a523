"""RabbitMQ only: a batch is acknowledged with one `basic.ack(multiple)` up to its last delivery
tag (`brokers.rabbit`). That is safe only while every subscription consumes on an AMQP channel
of its own: delivery tags are per channel, so on a shared channel the multiple-ack would also
acknowledge another subscription's deliveries that are still being handled."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from brokers import Subscription, create_transport
from config import Settings
from services.events import OrderCreated, PaymentEvent
from tests.conftest import BROKERS
from tests.support.system import uid

pytestmark = [
    pytest.mark.contract,
    pytest.mark.skipif("rabbit" not in BROKERS, reason="RabbitMQ not under test"),
]


async def _ignore(event: object) -> None:
    pass


@pytest.mark.usefixtures("brokers_running")
async def test_every_subscription_consumes_on_a_channel_of_its_own() -> None:
    settings = Settings(broker="rabbit", channel_namespace=uid("chan"))
    transport = create_transport(settings, CollectorRegistry(), app_name="t")
    for channel, model in (("order-events", OrderCreated), ("payment-events", PaymentEvent)):
        transport.subscribe(Subscription(settings.channel(channel), "inventory-service", _ignore, model))
    await transport.broker.start()
    try:
        consuming = [s for s in transport.broker.subscribers if getattr(s, "_queue_obj", None) is not None]
        channels = [s._queue_obj.channel for s in consuming]  # type: ignore[attr-defined]
        publishing = await transport.broker.config.channel_manager.get_channel()  # type: ignore[attr-defined]

        assert len(consuming) >= 2
        numbers = [c.number for c in channels]
        assert len(set(numbers)) == len(numbers), f"subscriptions share AMQP channels: {numbers}"
        assert publishing.number not in numbers
    finally:
        await transport.broker.stop()
