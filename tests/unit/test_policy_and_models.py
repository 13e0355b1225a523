"""Fast unit tests: policy arithmetic, configuration errors, event and request models."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from brokers import Observability, registry
from brokers.engine.publishing import Publishing, confirmations
from brokers.model import (
    NonRetryableError,
    Outgoing,
    RetryPolicy,
    Subscription,
    dead_letter_headers,
    is_poison,
)
from config import Settings
from services.events import OrderCreated


def test_backoff_delays_follow_the_contract_formula() -> None:
    policy = RetryPolicy(max_attempts=4, delay_ms=1000, multiplier=2.0)
    assert [policy.delay_ms_before(n) for n in (2, 3, 4)] == [1000, 2000, 4000]
    assert policy.retry_delays_ms() == [1000, 2000, 4000]


def test_constant_delay_needs_one_retry_tier() -> None:
    assert RetryPolicy(max_attempts=5, delay_ms=2000, multiplier=1.0).retry_delays_ms() == [2000]
    assert RetryPolicy(max_attempts=1).retry_delays_ms() == []


def test_unknown_broker_names_the_registered_transports() -> None:
    with pytest.raises(ValidationError) as err:
        Settings(broker="kafak")
    assert ", ".join(registry.names()) in str(err.value)
    assert {"kafka", "rabbit", "nats"} <= set(registry.names())


def test_defaults_match_the_contract() -> None:
    s = Settings(_env_file=None)
    assert (s.broker, s.resolved_broker_url) == ("kafka", "localhost:9092")
    assert (s.retry_max_attempts, s.retry_delay_ms, s.retry_backoff_multiplier) == (3, 2000, 1.0)
    assert [s.port_for(n) for n in ("order", "inventory", "payment", "notification")] == [8080, 8081, 8082, 8083]
    assert Settings(broker="rabbit").resolved_broker_url == "amqp://guest:guest@localhost:5672/"
    assert Settings(broker="nats").resolved_broker_url == "nats://localhost:4222"


def test_seed_flat_event_is_upgraded_to_schema_version_0() -> None:
    event = OrderCreated.model_validate({"orderId": "1001", "productId": "P123", "quantity": 2})
    assert event.schema_version == 0
    assert [(i.product_id, i.quantity) for i in event.items] == [("P123", 2)]


def test_event_json_carries_the_common_fields() -> None:
    body = OrderCreated(order_id="1", items=[{"productId": "P", "quantity": 1}]).model_dump(by_alias=True)
    assert {"eventType", "eventId", "schemaVersion", "occurredAt", "orderId"} <= body.keys()


def test_poison_classification() -> None:
    with pytest.raises(ValidationError) as err:
        OrderCreated.model_validate({"orderId": "1", "items": "nope"})
    assert is_poison(err.value)
    assert is_poison(NonRetryableError("x"))
    assert not is_poison(RuntimeError("transient"))


def test_dead_letter_envelope() -> None:
    async def handler(_: object) -> None: ...

    sub = Subscription("order-events", "inventory-service", handler, OrderCreated)
    headers = dead_letter_headers(sub, RuntimeError("boom\nline two"), 3)
    assert headers["x-original-destination"] == "order-events"
    assert headers["x-consumer"] == "inventory-service"
    assert headers["x-exception-type"] == "builtins.RuntimeError"
    assert headers["x-exception-message"] == "boom line two"
    assert headers["x-attempts"] == "3"
    assert headers["x-failed-at"].endswith("Z")


def test_bad_environment_stops_the_process_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from config import get_settings

    monkeypatch.setenv("BROKER", "kafak")
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as stop:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert str(stop.value) == (
        "switchboard: invalid configuration: BROKER: BROKER='kafak' is not supported; "
        f"valid values are: {', '.join(registry.names())}"
    )


async def test_publish_confirmations_report_each_send_on_its_own() -> None:
    """`publish_batch`'s outcomes: a confirmed send is None, a refused or failed one its error,
    one still unconfirmed at the deadline a TimeoutError (and it is cancelled)."""
    loop = asyncio.get_running_loop()
    confirmed, refused, never = loop.create_future(), loop.create_future(), loop.create_future()
    confirmed.set_result("ack")
    refused.set_exception(ConnectionError("nack"))
    not_started = RuntimeError("not connected")

    outcomes = await confirmations([confirmed, refused, not_started, never], timeout_s=0.05)

    assert outcomes[0] is None
    assert isinstance(outcomes[1], ConnectionError)
    assert outcomes[2] is not_started
    assert isinstance(outcomes[3], TimeoutError)
    assert never.cancelled()


class RecordingPublisher:
    """A `brokers.interface.Publisher` that records each `send_batch` and refuses body b"bad"."""

    def __init__(self, refused: BaseException) -> None:
        self.batches: list[list[bytes]] = []
        self.refused = refused

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        self.batches.append([m.body for m in messages])
        return [self.refused if m.body == b"bad" else None for m in messages]

    async def publish(self, message: Outgoing) -> None:
        raise AssertionError(f"the traced path is for recorded spans only, not {message}")

    def destination_label(self, message: Outgoing) -> str:
        return message.channel


async def test_publish_one_calls_of_one_loop_turn_share_one_batch() -> None:
    """Retry copies and dead letters of a batch go out in one `send_batch`, in call order;
    each caller gets its own message's outcome."""
    refused = ConnectionError("refused")
    publisher = RecordingPublisher(refused)
    publishing = Publishing(publisher, "fake", Observability(CollectorRegistry(), "t"))
    sends = (publishing.publish_one(Outgoing("c", body, "k", {})) for body in (b"1", b"bad", b"3"))

    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    await publishing.publish_one(Outgoing("c", b"4", "k", {}))

    assert outcomes == [None, refused, None]
    assert publisher.batches == [[b"1", b"bad", b"3"], [b"4"]]
