"""RabbitMQ users and permissions of the secured profile (`brokers.permissions`): one vhost, regexes per user."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from brokers.permissions import ADMIN, DLT, ServiceChannels, prefixes

VHOST = "switchboard"

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
