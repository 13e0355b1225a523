"""The aiokafka internals the Kafka transport still needs, one function each (checked by
tests/unit/test_kafka_internals.py against the installed aiokafka)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.api import Request


async def send_request(admin: AIOKafkaAdminClient, request: Request[Any]) -> Any:
    """Send a protocol `Request` to any broker of the cluster and return its response.

    aiokafka 0.14's admin client has no ACL calls (CreateAcls/DeleteAcls, used by
    `brokers.kafka.permissions.apply_kafka_acls`); its request types are public, but the only way to send
    one is the admin client's `_send_request`."""
    return await admin._send_request(request)
