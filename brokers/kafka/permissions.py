"""Kafka ACLs of the secured profile (`brokers.permissions`): LITERAL and PREFIXED, per service."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from brokers.permissions import DLT, PROVISION_OPS, ServiceChannels, prefixes

# Kafka's protocol codes (org.apache.kafka.common.acl / resource)
KAFKA_RESOURCE = {"TOPIC": 2, "GROUP": 3, "CLUSTER": 4}
KAFKA_PATTERN = {"LITERAL": 3, "PREFIXED": 4}
KAFKA_OPERATION = {"READ": 3, "WRITE": 4, "CREATE": 5, "DESCRIBE": 8, "DESCRIBE_CONFIGS": 10}
KAFKA_ALLOW = 3

@dataclass(frozen=True, order=True)
class KafkaAcl:
    principal: str
    resource: str
    """TOPIC | GROUP | CLUSTER (`kafka-cluster`)"""
    pattern: str
    """LITERAL | PREFIXED"""
    name: str
    operation: str

    def line(self) -> str:
        return f"ALLOW {self.principal} {self.operation} {self.resource} {self.pattern} {self.name}"


def kafka_acls(services: Sequence[ServiceChannels], namespaces: Iterable[str] = ()) -> list[KafkaAcl]:
    """Every ACL of every service user, for each namespace (retry tiers `<channel>.<consumer>.retry-…`
    and their groups of the same name: PREFIXED; everything else LITERAL)."""
    acls: set[KafkaAcl] = set()
    for svc in services:
        principal = f"User:{svc.user}"

        def add(resource: str, pattern: str, name: str, *ops: str, principal: str = principal) -> None:
            acls.update(KafkaAcl(principal, resource, pattern, name, op) for op in ops)

        for p in prefixes(namespaces):
            for channel in svc.publishes:
                add("TOPIC", "LITERAL", p + channel, "WRITE", *PROVISION_OPS)
            for channel in svc.consumes:
                tier = f"{p}{channel}.{svc.consumer}.retry-"
                add("TOPIC", "LITERAL", p + channel, "READ", *PROVISION_OPS)
                add("TOPIC", "PREFIXED", tier, "READ", "WRITE", *PROVISION_OPS)
                add("GROUP", "PREFIXED", tier, "READ", "DESCRIBE")
                add("TOPIC", "LITERAL", p + channel + DLT, "WRITE", *PROVISION_OPS)
            for channel in svc.dead_letters:
                add("TOPIC", "LITERAL", p + channel + DLT, "READ", *PROVISION_OPS)
            if svc.consumes or svc.dead_letters:
                add("GROUP", "LITERAL", p + svc.consumer, "READ", "DESCRIBE")
            for channel, consumer in svc.watched:
                add("TOPIC", "LITERAL", p + channel, "DESCRIBE")
                add("GROUP", "LITERAL", p + consumer, "DESCRIBE")
        if svc.consumes:  # provisioning sizes retry and DLT topics after the broker's message.max.bytes
            add("CLUSTER", "LITERAL", "kafka-cluster", "DESCRIBE_CONFIGS")
    return sorted(acls)


def _acl_fields(acl: KafkaAcl) -> tuple[int, str, int, str, str, int, int]:
    """The ACL as CreateAcls v1 / DeleteAcls v1 entries spell it (any host, ALLOW)."""
    return (
        KAFKA_RESOURCE[acl.resource],
        acl.name,
        KAFKA_PATTERN[acl.pattern],
        acl.principal,
        "*",
        KAFKA_OPERATION[acl.operation],
        KAFKA_ALLOW,
    )


async def apply_kafka_acls(admin: Any, acls: Sequence[KafkaAcl], *, revoke: bool = False) -> list[str]:
    """Create `acls` (`revoke`: delete exactly them) in one request, with an `AIOKafkaAdminClient`
    connected as a super user. Idempotent: an ACL that exists is kept, one that does not is not
    deleted. Returns the errors, one line each."""
    from aiokafka.errors import IncompatibleBrokerVersion
    from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest

    from brokers.kafka.internals import send_request

    entries = [_acl_fields(acl) for acl in acls]
    if not entries:
        return []

    class _Batch(DeleteAclsRequest if revoke else CreateAclsRequest):  # type: ignore[misc]
        """Every entry in one request (aiokafka's builders take one); v1: PREFIXED patterns."""

        def __init__(self) -> None:
            pass

        def build(self, struct: Any) -> Any:
            if struct.API_VERSION < 1:
                raise IncompatibleBrokerVersion("ACLs with resource patterns need CreateAcls/DeleteAcls v1")
            return struct(entries)

    response = await send_request(admin, _Batch())
    results = response.filter_responses if revoke else response.creation_responses
    errors = []
    for acl, result in zip(acls, results, strict=True):
        code, message = result[0], result[1]
        if code:
            errors.append(f"{acl.line()}: error {code} {message or ''}".rstrip())
    return errors
