"""Per-service broker grants of the secured profile (`scripts/brokers.sh start <broker> --auth`).

Each service's broker user may publish only the channels it owns and read only those it
consumes, plus what the transport needs for them: its retry plumbing and the `.DLT` of each
consumed channel (the consumer that gives up writes the dead letter), its consumer group /
queues / durables (named after its consumer name), the dead-letter listeners (notification),
the lag of the consumers of what it publishes, and the objects it provisions. `admin` (tools,
provisioning, Kafka super user) gets everything. What a service uses is read from the code
(`ServiceChannels.of`, from the service modules), never listed here by hand.

Grants are rendered for a set of channel namespaces (CHANNEL_NAMESPACE; the empty one always):
Kafka LITERAL and PREFIXED ACLs, RabbitMQ configure/write/read regexes on one vhost, NATS
per-user publish/subscribe allow lists. NATS stream tokens cannot be wildcarded in part, so
every namespace is named, on every broker alike.

    python -m brokers.permissions show  [--namespace NS ...]          # the grants, per broker
    python -m brokers.permissions nats-conf   --credentials FILE [--namespace NS ...]
    python -m brokers.permissions rabbit-definitions --credentials FILE [--vhost V] [--namespace NS ...]
    python -m brokers.permissions kafka-apply [--namespace NS ...] [--revoke]  # as admin: BROKER_URL / BROKER_*

FILE is `.local/auth/credentials.env` (`BROKER_PASSWORD_<USER>=…` lines).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ADMIN = "admin"
SERVICES = ("order", "inventory", "payment", "notification")
VHOST = "switchboard"
DLT = ".DLT"

# Kafka's protocol codes (org.apache.kafka.common.acl / resource)
KAFKA_RESOURCE = {"TOPIC": 2, "GROUP": 3, "CLUSTER": 4}
KAFKA_PATTERN = {"LITERAL": 3, "PREFIXED": 4}
KAFKA_OPERATION = {"READ": 3, "WRITE": 4, "CREATE": 5, "DESCRIBE": 8, "DESCRIBE_CONFIGS": 10}
KAFKA_ALLOW = 3
PROVISION_OPS = ("CREATE", "DESCRIBE", "DESCRIBE_CONFIGS")
"""What a service needs on each topic it uses to provision it (create, describe, compare)."""


@dataclass(frozen=True)
class ServiceChannels:
    """What one service uses, in contract channel names (the namespace is added per grant)."""

    user: str
    """its broker user: the service name"""
    consumer: str
    """its consumer name (Kafka group, RabbitMQ queue owner, NATS durable)"""
    publishes: tuple[str, ...]
    consumes: tuple[str, ...]
    dead_letters: tuple[str, ...] = ()
    """channels whose dead letters it listens to"""
    watched: tuple[tuple[str, str], ...] = ()
    """(channel, consumer name) whose lag it reads: the consumers of what it publishes"""

    @classmethod
    def of(cls, service: Any) -> ServiceChannels:
        """Read from a `services.runtime.Service` (its subscriptions, publishers, dead-letter
        listeners and lag watch)."""
        prefix = service.settings.channel("")

        def contract(name: str) -> str:
            return name.removeprefix(prefix) if prefix else name

        return cls(
            user=service.name,
            consumer=service.consumer,
            publishes=tuple(dict.fromkeys(service.published)),
            consumes=tuple(dict.fromkeys(contract(s.channel) for s in service.transport.subscriptions)),
            dead_letters=tuple(dict.fromkeys(service.dead_letters_heard)),
            watched=tuple(
                dict.fromkeys(
                    (contract(c), consumer)
                    for c, consumer in service.transport.lag_watch
                    if consumer != service.consumer
                )
            ),
        )


def prefixes(namespaces: Iterable[str]) -> list[str]:
    """Channel-name prefixes of `namespaces`, the empty namespace always first."""
    out = [""]
    for ns in namespaces:
        ns = ns.strip()
        if ns and f"{ns}." not in out:
            out.append(f"{ns}.")
    return out


# --------------------------------------------------------------------------- Kafka
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


# --------------------------------------------------------------------------- RabbitMQ
@dataclass(frozen=True)
class RabbitPermission:
    user: str
    configure: str
    write: str
    read: str


def _regex(names: Iterable[str], prefixes_: Sequence[str], *, plain: Iterable[str] = ()) -> str:
    """`^(?:(?:ns\\.|)(?:a|b)|plain)$`: each name under each namespace prefix, plus `plain` names
    (amq.default) as they are. Names may carry `\\d+` (delay queues): given as regex already."""
    alternatives = sorted(set(names))
    if not alternatives and not plain:
        return "^$"
    parts = []
    if alternatives:
        ns = "|".join(re.escape(p) for p in prefixes_[1:]) + "|" if len(prefixes_) > 1 else ""
        parts.append(f"(?:{ns})(?:{'|'.join(alternatives)})" if ns else f"(?:{'|'.join(alternatives)})")
    parts += [re.escape(n) for n in plain]
    return "^(?:" + "|".join(parts) + ")$"


def rabbit_permissions(services: Sequence[ServiceChannels], namespaces: Iterable[str] = ()) -> list[RabbitPermission]:
    """configure/write/read regexes of each service user on the vhost (exchanges and queues share
    one name space): its exchanges, its consumer and delay queues, the DLT exchange and queue of
    what it consumes, its dead-letter listener queues, and amq.default (retry copies)."""
    pre = prefixes(namespaces)
    out = []
    for svc in services:
        e = re.escape
        consumer = e(svc.consumer)
        configure: set[str] = set()
        write: set[str] = set()
        read: set[str] = set()
        for channel in svc.publishes:
            configure.add(e(channel))
            write.add(e(channel))
        for channel in svc.consumes:
            queue = f"{e(channel)}\\.{consumer}"
            dlt = e(channel + DLT)
            delay = f"{queue}\\.retry-\\d+ms"  # dead-letters into the queue: read on it (RabbitMQ's DLX check)
            configure |= {e(channel), queue, delay, dlt}
            write |= {queue, dlt}
            read |= {e(channel), queue, delay, dlt}
        for channel in svc.dead_letters:
            dlt = e(channel + DLT)
            listener = f"{dlt}\\.{consumer}"
            configure |= {dlt, listener}
            write.add(listener)
            read |= {dlt, listener}
        amq = ["amq.default"] if svc.consumes else []
        out.append(RabbitPermission(svc.user, _regex(configure, pre), _regex(write, pre, plain=amq), _regex(read, pre)))
    return out


def rabbit_password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def rabbit_definitions(
    services: Sequence[ServiceChannels],
    passwords: Mapping[str, str],
    namespaces: Iterable[str] = (),
    vhost: str = VHOST,
) -> dict[str, Any]:
    """Definitions (`rabbitmqctl import_definitions`, or loaded at boot): the vhost, `admin`
    (administrator, everything on it) and each service user with its permissions."""
    users = [_rabbit_user(ADMIN, passwords[ADMIN], "administrator")]
    perms = [{"user": ADMIN, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}]
    for p in rabbit_permissions(services, namespaces):
        users.append(_rabbit_user(p.user, passwords[p.user], ""))
        perms.append({"user": p.user, "vhost": vhost, "configure": p.configure, "write": p.write, "read": p.read})
    return {"users": users, "vhosts": [{"name": vhost}], "permissions": perms}


def _rabbit_user(name: str, password: str, tags: str) -> dict[str, str]:
    return {
        "name": name,
        "password_hash": rabbit_password_hash(password),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": tags,
    }


# --------------------------------------------------------------------------- NATS
@dataclass(frozen=True)
class NatsPermission:
    user: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def nats_stream(subject: str) -> str:
    """The stream keeping `subject` (as `brokers.nats` names it; `-DLT` for a dead-letter subject)."""
    from brokers.nats import stream_name

    return stream_name(subject.removesuffix(DLT)) + "-DLT" if subject.endswith(DLT) else stream_name(subject)


def nats_bodies_bucket(prefix: str) -> str:
    """The Object Store bucket of spilled dead-letter bodies for a namespace prefix (`brokers.nats`)."""
    from brokers.nats import BODIES_BUCKET, stream_name

    return f"{stream_name(prefix.removesuffix('.'))}-{BODIES_BUCKET}" if prefix else BODIES_BUCKET


def _bucket_put(bucket: str) -> list[str]:
    """What an Object Store `put` needs (bucket lookup and creation, chunks and meta, the last meta,
    the purge of a replaced object's chunks)."""
    stream = f"OBJ_{bucket}"
    return [
        *_stream_api(stream),
        f"$O.{bucket}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.PURGE.{stream}",
    ]


def _durable_api(stream: str, durable: str) -> list[str]:
    """What a durable pull consumer needs: create (each API form nats-py uses), info, pull, ack."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _stream_api(stream: str) -> list[str]:
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.CREATE.{stream}"]


def nats_permissions(services: Sequence[ServiceChannels], namespaces: Iterable[str] = ()) -> list[NatsPermission]:
    """Each service user's publish and subscribe allow lists: its channel subjects, the `.DLT`
    subjects of what it consumes, the JetStream API of exactly its streams and durables, and (a
    consumer, which dead-letters) the bucket of dead-letter bodies too large to go with them."""
    out = []
    for svc in services:
        pub: list[str] = ["$JS.API.INFO"]
        sub: list[str] = ["_INBOX.>"]
        for p in prefixes(namespaces):
            for channel in svc.publishes:
                pub += [p + channel, *_stream_api(nats_stream(p + channel))]
            for channel in svc.consumes:
                stream, dlt = nats_stream(p + channel), nats_stream(p + channel + DLT)
                pub += [p + channel + DLT, *_stream_api(stream), *_stream_api(dlt), f"$JS.API.STREAM.MSG.GET.{stream}"]
                pub += _durable_api(stream, svc.consumer)
                sub.append(f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{svc.consumer}")
            if svc.consumes:
                pub += _bucket_put(nats_bodies_bucket(p))
            for channel in svc.dead_letters:
                dlt = nats_stream(p + channel + DLT)
                pub += [*_stream_api(dlt), *_durable_api(dlt, svc.consumer)]
            for channel, consumer in svc.watched:
                pub.append(f"$JS.API.CONSUMER.INFO.{nats_stream(p + channel)}.{consumer}")
        out.append(NatsPermission(svc.user, tuple(dict.fromkeys(pub)), tuple(dict.fromkeys(sub))))
    return out


def nats_authorization(
    services: Sequence[ServiceChannels], passwords: Mapping[str, str], namespaces: Iterable[str] = ()
) -> str:
    """The server config's `authorization { users = [...] }` block (`admin` unrestricted)."""

    def q(text: str) -> str:
        return json.dumps(text)

    lines = ["authorization {", "  users = [", f"    {{ user: {q(ADMIN)}, password: {q(passwords[ADMIN])} }}"]
    for p in nats_permissions(services, namespaces):
        lines += [
            f"    {{ user: {q(p.user)}, password: {q(passwords[p.user])}, permissions: {{",
            "        publish: { allow: [" + ", ".join(q(s) for s in p.publish) + "] }",
            "        subscribe: { allow: [" + ", ".join(q(s) for s in p.subscribe) + "] }",
            "    } }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI
def discover() -> list[ServiceChannels]:
    """What the four service modules use, as the configured settings build them (CONSUMER_NAMES
    included). Importing a service module builds its `Service`; nothing connects."""
    import importlib

    return [ServiceChannels.of(importlib.import_module(f"services.{name}").service) for name in SERVICES]


def read_passwords(path: Path) -> dict[str, str]:
    """`BROKER_PASSWORD_<USER>=…` lines of the credentials file, by lower-case user."""
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("BROKER_PASSWORD_"):
            out[key.removeprefix("BROKER_PASSWORD_").lower()] = value.strip().strip("'\"")
    return out


def show(services: Sequence[ServiceChannels], namespaces: Sequence[str]) -> str:
    lines = []
    for svc in services:
        lines.append(
            f"{svc.user} (consumer {svc.consumer}): publishes {', '.join(svc.publishes) or '-'}; "
            f"consumes {', '.join(svc.consumes) or '-'}"
            + (f"; hears dead letters of {', '.join(svc.dead_letters)}" if svc.dead_letters else "")
        )
    lines.append("")
    lines += ["# Kafka ACLs", *(a.line() for a in kafka_acls(services, namespaces)), ""]
    lines.append(f"# RabbitMQ permissions on vhost {VHOST} (configure / write / read)")
    for p in rabbit_permissions(services, namespaces):
        lines += [f"{p.user}: {p.configure}", f"{' ' * len(p.user)}  {p.write}", f"{' ' * len(p.user)}  {p.read}"]
    lines += ["", "# NATS"]
    for n in nats_permissions(services, namespaces):
        lines += [f"{n.user} publish: {' '.join(n.publish)}", f"{n.user} subscribe: {' '.join(n.subscribe)}"]
    return "\n".join(lines)


async def _kafka_apply(namespaces: Sequence[str], *, revoke: bool) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    from brokers import broker_url
    from brokers.credentials import kafka_sasl_options, redacted
    from brokers.nodes import kafka_bootstrap_servers
    from config import Settings

    settings = Settings(broker="kafka")
    url = broker_url(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka_bootstrap_servers(url), **kafka_sasl_options(url, settings.kafka_sasl_mechanism)
    )
    acls = kafka_acls(discover(), namespaces)
    if revoke:  # the namespaces' own ACLs only: never those of the empty namespace
        acls = [acl for acl in acls if acl not in set(kafka_acls(discover()))]
    try:
        await admin.start()
        errors = await apply_kafka_acls(admin, acls, revoke=revoke)
    except Exception as exc:  # noqa: BLE001 - reported with the (redacted) address
        print(f"error: cannot apply ACLs on {redacted(url)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        await admin.close()
    for error in errors:
        print(error, file=sys.stderr)
    done = "deleted from" if revoke else "in place on"
    print(f"{len(acls) - len(errors)} of {len(acls)} ACL(s) {done} {redacted(url)}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brokers.permissions", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["show", "nats-conf", "rabbit-definitions", "kafka-apply"])
    parser.add_argument("--namespace", action="append", default=[], help="a channel namespace to grant (repeatable)")
    parser.add_argument("--credentials", type=Path, help="the credentials file (BROKER_PASSWORD_<USER>=… lines)")
    parser.add_argument("--vhost", default=VHOST)
    parser.add_argument("--revoke", action="store_true", help="kafka-apply: delete the namespaces' ACLs instead")
    args = parser.parse_args(argv)
    namespaces = [ns for ns in args.namespace if ns.strip()]
    if args.command == "kafka-apply":
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
        return asyncio.run(_kafka_apply(namespaces, revoke=args.revoke))
    services = discover()
    if args.command == "show":
        print(show(services, namespaces))
        return 0
    if args.credentials is None:
        parser.error(f"{args.command} needs --credentials")
    passwords = read_passwords(args.credentials)
    missing = [u for u in (ADMIN, *(s.user for s in services)) if u not in passwords]
    if missing:
        print(f"error: {args.credentials} has no password for {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.command == "nats-conf":
        print(nats_authorization(services, passwords, namespaces), end="")
    else:
        print(json.dumps(rabbit_definitions(services, passwords, namespaces, args.vhost), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
