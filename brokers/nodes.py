"""`BROKER_URL` as a node list: one address, or several separated by commas.

* Kafka: `[user:password@]host:port[,host:port…]`, the bootstrap servers (any one that answers is
  enough); credentials select SASL (`brokers.credentials`).
* NATS: `nats://host:port[,nats://host:port…]` (a bare `host:port` gets `nats://`); the
  client connects to one and fails over to the others and to those the cluster announces.
* RabbitMQ: full AMQP URLs, or one URL whose host part lists several nodes
  (`amqp://user:pass@h1:5672,h2:5672,h3:5672/vhost`): a node without scheme, credentials
  or vhost takes those of the URL. The client connects to the first node that answers
  and moves to the next one whenever its connection is lost.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from brokers.credentials import without_credentials


def split_nodes(url: str) -> list[str]:
    """The comma-separated parts of `url`, stripped, empty ones dropped."""
    nodes = [part.strip() for part in url.split(",") if part.strip()]
    if not nodes:
        raise ValueError("BROKER_URL names no node")
    return nodes


def kafka_bootstrap_servers(url: str) -> list[str]:
    """`host:port` of each node; a `user:password@` part is left out (`brokers.credentials`)."""
    return [node.removeprefix("kafka://") for node in split_nodes(without_credentials(url))]


def nats_servers(url: str) -> list[str]:
    return [node if "://" in node else f"nats://{node}" for node in split_nodes(url)]


def rabbit_node_urls(url: str) -> list[str]:
    """One full AMQP URL per node, completed from the parts that carry scheme, credentials and vhost."""
    nodes = split_nodes(url)
    full = [urlsplit(node) for node in nodes if "://" in node]
    if not full:
        raise ValueError(f"BROKER_URL {url!r}: no node has a scheme (amqp:// or amqps://)")
    scheme = full[0].scheme
    userinfo = full[0].netloc.rpartition("@")[0]
    path = next((u.path for u in (urlsplit(n if "://" in n else f"{scheme}://{n}") for n in nodes) if u.path), "")
    completed = []
    for node in nodes:
        parts = urlsplit(node if "://" in node else f"{scheme}://{node}")
        netloc = parts.netloc if "@" in parts.netloc or not userinfo else f"{userinfo}@{parts.netloc}"
        completed.append(urlunsplit((parts.scheme, netloc, parts.path or path, parts.query, parts.fragment)))
    return completed
