"""BROKER_URL node lists, and the transports' recovery moves that need no broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaError, KafkaTimeoutError, OutOfOrderSequenceNumber, RequestTimedOutError
from yarl import URL

from brokers.kafka.clients import Sender
from brokers.nodes import kafka_bootstrap_servers, nats_servers, rabbit_node_urls
from brokers.rabbit.failover import NodeFailover


def test_kafka_node_list_is_split() -> None:
    assert kafka_bootstrap_servers("localhost:9092, localhost:9094,localhost:9096") == [
        "localhost:9092",
        "localhost:9094",
        "localhost:9096",
    ]


def test_nats_nodes_get_a_scheme() -> None:
    assert nats_servers("nats://a:4222,b:4223") == ["nats://a:4222", "nats://b:4223"]


def test_rabbit_hosts_share_credentials_and_vhost() -> None:
    assert rabbit_node_urls("amqp://u:p@h1:5681,h2:5682,h3:5683/shop") == [
        "amqp://u:p@h1:5681/shop",
        "amqp://u:p@h2:5682/shop",
        "amqp://u:p@h3:5683/shop",
    ]
    assert rabbit_node_urls("amqp://a:b@h1/v1,amqp://c:d@h2/v2") == ["amqp://a:b@h1/v1", "amqp://c:d@h2/v2"]


def test_a_url_without_nodes_is_refused() -> None:
    with pytest.raises(ValueError, match="names no node"):
        kafka_bootstrap_servers(" , ")


class _FakeProducer:
    def __init__(self) -> None:
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True


@pytest.mark.parametrize("fatal", [OutOfOrderSequenceNumber(), KafkaError("Unexpected error during batch delivery")])
async def test_kafka_producer_is_replaced_after_a_fatal_error(fatal: BaseException) -> None:
    sender = Sender(["localhost:1"])
    broken = sender._producer = _FakeProducer()  # type: ignore[assignment]
    await sender.replace_if_broken([None, fatal])
    assert broken.stopped
    assert sender._producer is None


async def test_kafka_producer_is_kept_after_retriable_errors() -> None:
    sender = Sender(["localhost:1"])
    kept = sender._producer = _FakeProducer()  # type: ignore[assignment]
    await sender.replace_if_broken([KafkaTimeoutError(), RequestTimedOutError(), None])
    assert sender._producer is kept
    assert not kept.stopped


class _FakeConnection:
    def __init__(self, url: str) -> None:
        self.url = URL(url)


async def test_rabbit_connection_moves_to_a_node_that_answers(unused_tcp_port: int) -> None:
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", unused_tcp_port)
    dead = "amqp://g:g@127.0.0.1:1/"
    alive = f"amqp://g:g@127.0.0.1:{unused_tcp_port}/"
    failover = NodeFailover([dead, "amqp://g:g@127.0.0.1:2/", alive])
    connection = _FakeConnection(dead)
    async with server:
        await failover.on_close(connection, ConnectionError("node gone"))
    assert str(connection.url) == alive
