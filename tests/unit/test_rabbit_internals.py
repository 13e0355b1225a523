"""What `brokers.rabbit.internals` relies on in FastStream: it fails loudly when an upgrade
changes it (then `divert_deliveries` must be revisited, see its docstring)."""

from __future__ import annotations

import inspect
from typing import Any

from faststream import AckPolicy
from faststream.__about__ import __version__ as faststream_version
from faststream.rabbit import RabbitBroker, RabbitRouter
from faststream.rabbit.subscriber import RabbitSubscriber

from brokers.rabbit.internals import divert_deliveries

FASTSTREAM = f"faststream {faststream_version}"


def _subscriber() -> RabbitSubscriber:
    router = RabbitRouter()
    subscriber = router.subscriber("q", ack_policy=AckPolicy.MANUAL)

    async def handle(body: bytes) -> None:
        pass

    subscriber(handle)
    RabbitBroker().include_router(router)
    return subscriber


def test_faststream_hands_deliveries_to_the_subscribers_consume_method() -> None:
    source = inspect.getsource(RabbitSubscriber.start)
    assert "self.consume," in source, (
        f"{FASTSTREAM}: RabbitSubscriber.start no longer consumes with `self.consume`; "
        "divert_deliveries would no longer see the deliveries"
    )
    params = list(inspect.signature(RabbitSubscriber.consume).parameters)
    assert params == ["self", "msg"], f"{FASTSTREAM}: RabbitSubscriber.consume takes {params}, not (self, msg)"


def test_deliveries_are_diverted_and_faststreams_consume_is_kept() -> None:
    subscriber = _subscriber()
    taken: list[Any] = []
    try:
        consume = divert_deliveries(subscriber, taken.append)
    except TypeError as exc:  # "object layout differs"
        raise AssertionError(f"{FASTSTREAM}: a RabbitSubscriber's class can no longer be swapped: {exc}") from exc
    assert isinstance(subscriber, RabbitSubscriber), f"{FASTSTREAM}: the diverted subscriber is no RabbitSubscriber"
    assert getattr(consume, "__func__", None) is RabbitSubscriber.consume, (
        f"{FASTSTREAM}: divert_deliveries did not return FastStream's own consume"
    )
    assert getattr(consume, "__self__", None) is subscriber


async def test_a_diverted_delivery_reaches_the_intake_only() -> None:
    subscriber = _subscriber()
    taken: list[Any] = []
    consume = divert_deliveries(subscriber, taken.append)
    assert await subscriber.consume("delivery") is None
    assert taken == ["delivery"]
    assert await consume("not running") is None, f"{FASTSTREAM}: consume of a stopped subscriber processed a message"
    assert taken == ["delivery"]
