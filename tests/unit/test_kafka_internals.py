"""What `brokers.kafka.internals` relies on in aiokafka: fails loudly when an aiokafka upgrade
changes it (then adapt internals.py, or drop it if aiokafka gained a public way)."""

from __future__ import annotations

import inspect
from typing import Any

import aiokafka
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest

from brokers.kafka.internals import send_request

VERSION = f"aiokafka {aiokafka.__version__}"


def test_the_admin_client_still_has_no_public_acl_calls() -> None:
    public = {name for name in dir(AIOKafkaAdminClient) if not name.startswith("_")}
    acl_calls = {name for name in public if "acl" in name.lower()}
    assert not acl_calls, (
        f"{VERSION} has public ACL calls {sorted(acl_calls)}: use them in brokers.kafka.permissions "
        "and drop brokers.kafka.internals.send_request"
    )


def test_send_request_is_the_admin_clients_private_sender() -> None:
    sender = getattr(AIOKafkaAdminClient, "_send_request", None)
    assert sender is not None, (
        f"{VERSION}: AIOKafkaAdminClient._send_request (used by brokers.kafka.internals.send_request) is gone"
    )
    assert inspect.iscoroutinefunction(sender), f"{VERSION}: AIOKafkaAdminClient._send_request is no coroutine"
    params = list(inspect.signature(sender).parameters)
    assert params[:2] == ["self", "request"], f"{VERSION}: AIOKafkaAdminClient._send_request takes {params}"


class _RecordingClient:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    def get_random_node(self) -> int:
        return 7

    async def send(self, node_id: Any, request: Any) -> str:
        self.sent.append((node_id, request))
        return "response"


async def test_send_request_sends_the_request_to_a_broker_and_returns_the_response() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers="localhost:1")
    client = _RecordingClient()
    admin._client = client  # type: ignore[assignment]
    request = CreateAclsRequest(2, "t", 3, "User:u", "*", 3, 3)

    response = await send_request(admin, request)

    assert (response, client.sent) == ("response", [(7, request)]), (
        f"{VERSION}: AIOKafkaAdminClient._send_request no longer sends through its client to a random node"
    )
