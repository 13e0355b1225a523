"""NATS only: `publish_batch` sends with its own acked publisher (`brokers.nats._AckedPublisher`),
so JetStream's answers are read by our code: each refusal must be that message's outcome,
never a hang or another message's failure."""

from __future__ import annotations

import nats
import pytest
from nats.js.errors import BadRequestError, NoStreamResponseError
from prometheus_client import CollectorRegistry

from brokers import create_transport
from brokers.base import Outgoing
from config import Settings
from tests.conftest import BROKERS
from tests.support.system import uid

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
