"""NATS users of the secured profile (`brokers.permissions`): publish/subscribe allow lists per user."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from brokers.permissions import ADMIN, DLT, ServiceChannels, prefixes


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
