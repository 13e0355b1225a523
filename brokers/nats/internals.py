"""The NATS transport's only reliance on library internals, one function each (reasons in their
docstrings); tests/unit/test_nats_internals.py fails when an installed version changes them."""

from __future__ import annotations

from typing import Any


def server_info(client: Any) -> dict[str, Any]:
    """The INFO the connected server sent (`cluster`, `connect_urls`), which tells the cluster size
    the stream replicas follow; nats-py keeps it only as `Client._server_info` (no public
    accessor, nor any JetStream API telling an ordinary account). Empty when unknown."""
    info = getattr(client, "_server_info", None)
    return info if isinstance(info, dict) else {}


def read_instead(subscriber: Any, reader: Any) -> None:
    """Leave the reading of FastStream's JetStream pull subscriber to `reader` (our pull loop):
    a subscriber whose `subscription` is already set when the broker starts it creates no pull
    subscription and no pull task of its own, yet documents its channel in AsyncAPI and runs
    `consume` with its middlewares; when it stops it calls `reader.unsubscribe()`. FastStream
    has no public switch for this; its own loops wait out a full batch (or spin on a closed
    connection), which the services cannot afford."""
    subscriber.subscription = reader
