"""What `brokers.nats.internals` relies on in the installed nats-py and FastStream: a failure here
names the library whose internals changed; adapt the function (and its docstring) to the new version."""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import Any

from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub, TestNatsBroker
from nats.aio.client import Client

from brokers.nats.internals import read_instead, server_info
from brokers.nats.provision import cluster_size

NATS_PY = f"nats-py {version('nats-py')}"
FASTSTREAM = f"faststream {version('faststream')}"


def test_nats_py_keeps_the_server_info_as_client_server_info() -> None:
    client = Client()
    assert isinstance(getattr(client, "_server_info", None), dict), (
        f"{NATS_PY}: Client no longer keeps the INFO dict as `_server_info`; fix internals.server_info"
    )
    assert "self._server_info = " in inspect.getsource(Client), (
        f"{NATS_PY}: Client no longer stores the server's INFO in `_server_info`; fix internals.server_info"
    )
    client._server_info = {"cluster": "c", "connect_urls": ["a:4222", "b:4222", "c:4222"]}
    assert server_info(client)["cluster"] == "c"
    assert cluster_size(client) == 3


class Reader:
    """Stands for our pull loop."""

    def __init__(self) -> None:
        self.unsubscribed = False

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


async def _endpoint(body: Any) -> None:
    pass


async def test_faststream_leaves_a_subscriber_with_a_subscription_to_its_reader() -> None:
    broker = NatsBroker()
    batch = broker.subscriber(
        "s",
        stream=JStream("s"),
        durable="d",
        pull_sub=PullSub(batch_size=4, timeout=1.0, batch=True),
        config=ConsumerConfig(max_deliver=2),
    )
    single = broker.subscriber("s.DLT", stream=JStream("s-DLT"), durable="d", pull_sub=PullSub(batch_size=4))
    control = broker.subscriber("c", stream=JStream("c"), durable="d", pull_sub=PullSub(batch_size=4, batch=True))
    subscribers: list[Any] = [batch, single, control]
    for subscriber in subscribers:
        subscriber(_endpoint)
    readers: dict[Any, Reader] = {batch: Reader(), single: Reader()}
    for subscriber, reader in readers.items():
        read_instead(subscriber, reader)
    async with TestNatsBroker(broker, connect_only=True):  # a fake connection: nothing is sent
        for subscriber in subscribers:
            await subscriber.start()
        try:
            assert control.tasks, f"{FASTSTREAM}: a pull subscriber no longer starts a task of its own (test outdated)"
            for subscriber, reader in readers.items():
                assert subscriber.running, f"{FASTSTREAM}: the subscriber did not start"
                assert subscriber.tasks == [], (
                    f"{FASTSTREAM}: {type(subscriber).__name__} started a pull task of its own although its "
                    "`subscription` was set; fix internals.read_instead"
                )
                assert subscriber.subscription is reader, f"{FASTSTREAM}: the subscriber replaced its `subscription`"
        finally:
            for subscriber in subscribers:
                await subscriber.stop()
    for reader in readers.values():
        assert reader.unsubscribed, f"{FASTSTREAM}: stopping a subscriber no longer unsubscribes its `subscription`"
