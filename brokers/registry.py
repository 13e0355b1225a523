"""Transports by name: the entry-point group `switchboard.transports` (built-ins included)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from brokers.interface import TransportPlugin

GROUP = "switchboard.transports"


class UnknownTransport(ValueError):
    pass


@cache
def registered() -> dict[str, str]:
    """Registered transport names → their entry point's target ("module:attr" or "module")."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def names() -> list[str]:
    return sorted(registered())


def check_name(name: str) -> str:
    """`name` if a transport is registered under it, else UnknownTransport listing the registered ones."""
    if name not in registered():
        valid = ", ".join(names()) or "none (is the project installed? run scripts/setup.sh)"
        raise UnknownTransport(f"BROKER={name!r} is not supported; valid values are: {valid}")
    return name


def load(name: str) -> TransportPlugin:
    """Import the transport registered as `name`."""
    check_name(name)
    [entry] = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    return cast("TransportPlugin", entry.load())
