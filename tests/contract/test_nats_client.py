"""NATS only: what our own code does with JetStream's answers.

`publish_batch` sends with its own acked publisher (`brokers.nats.publisher.AckedPublisher`): each
refusal must be that message's outcome, never a hang or another message's failure. And a
message the server stopped redelivering without our code deciding (JetStream's
MAX_DELIVERIES advisory) must still reach the dead-letter channel with the envelope."""

from __future__ import annotations

import json

import nats
import pytest
from nats.js.errors import BadRequestError, NoStreamResponseError
from prometheus_client import CollectorRegistry

from brokers import create_transport
from brokers.model import Outgoing
from config import Settings
from tests.conftest import BROKERS
from tests.contract.test_failures import ENVELOPE, dead_letters_of
from tests.support.raw import RawClient
from tests.support.system import System, uid

pytestmark = [
    pytest.mark.contract,
    pytest.mark.skipif("nats" not in BROKERS, reason="NATS not under test"),
]
NATS_URL = "nats://localhost:4222"


@pytest.mark.usefixtures("brokers_running")
async def test_each_jetstream_refusal_is_its_own_message_outcome() -> None:
    stored, unstored, misrouted = (uid("pubtest-") + suffix for suffix in ("-ok", "-nostream", "-other"))
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    transport = create_transport(Settings(broker="nats", broker_url=NATS_URL), CollectorRegistry(), app_name="t")
    await transport.broker.connect()
    try:
        await js.add_stream(name=stored, subjects=[stored])
        # the transport expects the stream named like the subject; this one is kept by another stream
        await js.add_stream(name=misrouted + "-elsewhere", subjects=[misrouted])

        outcomes = await transport.publish_batch(
            [
                Outgoing(stored, b'{"n": 1}', "k", {"event-id": uid("e-")}),
                Outgoing(unstored, b'{"n": 2}', "k", {"event-id": uid("e-")}),
                Outgoing(misrouted, b'{"n": 3}', "k", {"event-id": uid("e-")}),
                Outgoing(stored, b'{"n": 4}', "k", {"event-id": uid("e-")}),
            ]
        )

        assert outcomes[0] is None
        assert outcomes[3] is None
        assert isinstance(outcomes[1], NoStreamResponseError)
        assert isinstance(outcomes[2], BadRequestError), outcomes[2]
        assert (await js.stream_info(stored)).state.messages == 2
    finally:
        await transport.broker.stop()
        for stream in (stored, misrouted + "-elsewhere"):
            await js.delete_stream(stream)
        await nc.close()


async def test_max_deliveries_advisory_dead_letters_the_message(system: System, raw: RawClient) -> None:
    """The server emits the advisory when a consumer reached max_deliver without an ack or a
    decision (a process killed during every delivery); the service then dead-letters the
    stored message itself. The advisory is published here as the server would."""
    if system.broker != "nats":
        pytest.skip("a JetStream advisory")
    order_id = uid("advisory-")
    body = json.dumps({"orderId": order_id, "productId": uid("unknown-"), "quantity": 1}).encode()
    stored = await raw.nc.jetstream().publish(system.channel("order-events"), body)  # type: ignore[attr-defined]
    advisory = {"stream": stored.stream, "consumer": "inventory-service", "stream_seq": stored.seq, "deliveries": 4}
    subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stored.stream}.inventory-service"

    await raw.nc.publish(subject, json.dumps(advisory).encode())  # type: ignore[attr-defined]

    [letter] = await dead_letters_of(raw, system, order_id)
    assert letter.body == body
    assert set(letter.headers) >= ENVELOPE
    assert letter.headers["x-exception-type"] == "brokers.nats.MaxDeliveriesExceeded"
    assert letter.headers["x-attempts"] == "4"
    assert letter.headers["x-consumer"] == "inventory-service"
    assert letter.headers["x-original-destination"] == system.channel("order-events")
