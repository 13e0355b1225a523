"""Broker credentials: carried by `BROKER_URL`, or by BROKER_USERNAME / BROKER_PASSWORD.

* RabbitMQ `amqp://user:password@host:port/vhost` and NATS `nats://user:password@host:port`
  are their clients' own URL forms; Kafka's is `user:password@host:port[,host:port…]`
  (the credentials of the first node apply to every node), used with SASL
  (KAFKA_SASL_MECHANISM, default SCRAM-SHA-512) over plaintext.
* BROKER_USERNAME / BROKER_PASSWORD, when set, replace the URL's credentials (an environment
  variable keeps the secret out of the process list). User names and passwords are
  percent-decoded from a URL and percent-encoded into one.

No broker client is imported here: URL arithmetic only (unit-tested).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

KAFKA_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?:(?P<userinfo>[^@/,]*)@)?(?P<rest>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def _split(node: str) -> tuple[str, str | None, str]:
    """(scheme://, userinfo or None, rest) of one node of a URL."""
    m = _USERINFO.match(node.strip())
    assert m is not None  # the pattern matches every string
    return m.group("scheme") or "", m.group("userinfo"), m.group("rest")


def url_credentials(url: str) -> Credentials | None:
    """The credentials in the first node of `url` that carries any (None: the URL has none)."""
    for node in url.split(","):
        _, userinfo, _ = _split(node)
        if userinfo:
            user, _, password = userinfo.partition(":")
            return Credentials(unquote(user), unquote(password))
    return None


def with_credentials(url: str, username: str | None, password: str | None) -> str:
    """`url` with BROKER_USERNAME / BROKER_PASSWORD in place of its credentials (on every node
    that carries some, else on every node); unchanged when neither variable is set."""
    if not username and not password:
        return url
    present = url_credentials(url)
    user = username if username else (present.username if present else "")
    secret = password if password is not None else (present.password if present else "")
    userinfo = quote(user, safe="") + (":" + quote(secret, safe="") if secret else "")
    nodes = url.split(",")
    carrying = [i for i, node in enumerate(nodes) if _split(node)[1]] or range(len(nodes))
    out = []
    for i, node in enumerate(nodes):
        scheme, _, rest = _split(node)
        out.append(f"{scheme}{userinfo}@{rest}" if i in carrying else node)
    return ",".join(out)


def without_credentials(url: str) -> str:
    """`url` without any `user:password@` part (Kafka bootstrap servers are bare `host:port`)."""
    return ",".join(scheme + rest for scheme, _, rest in (_split(node) for node in url.split(",")))


def redacted(url: str) -> str:
    """`url` fit for a log line: every password replaced by `***` (user names kept)."""
    out = []
    for node in url.split(","):
        scheme, userinfo, rest = _split(node)
        if userinfo:
            user, sep, _ = userinfo.partition(":")
            node = f"{scheme}{user}{':***' if sep else ''}@{rest}"
        out.append(node)
    return ",".join(out)


def kafka_sasl_options(url: str, mechanism: str) -> dict[str, str]:
    """aiokafka's security options for a Kafka `BROKER_URL`: SASL_PLAINTEXT with `mechanism`
    when the URL carries credentials, else nothing (PLAINTEXT)."""
    creds = url_credentials(url)
    if creds is None:
        return {}
    name = mechanism.strip().upper()
    if name not in KAFKA_MECHANISMS:
        valid = ", ".join(KAFKA_MECHANISMS)
        raise ValueError(f"KAFKA_SASL_MECHANISM={mechanism!r} is not supported; valid values are: {valid}")
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": name,
        "sasl_plain_username": creds.username,
        "sasl_plain_password": creds.password,
    }
