"""NATS: the `nats` CLI (natscli v0.5.0) publishes to our subjects and reads our DLT stream."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from tests.foreign import clients
from tests.foreign.conftest import only_on
from tests.support.system import System, eventually, uid

pytestmark = [pytest.mark.foreign, only_on("nats")]
NATS_URL = "nats://localhost:4222"


async def nats(*args: str) -> str:
    done = await clients.run([str(clients.NATS_CLI), "--server", NATS_URL, *args], timeout=30)
    assert done.returncode == 0, f"nats {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


async def dead_letters(stream: str) -> list[dict[str, Any]]:
    """Every message of `stream`, read with `nats stream get --json`: subject, headers, data."""
    state = json.loads(await nats("stream", "info", stream, "--json"))["state"]
    letters = []
    for seq in range(max(state["first_seq"], 1), state["last_seq"] + 1):
        got = json.loads(await nats("stream", "get", stream, str(seq), "--json"))
        letters.append(
            {"subject": got["subject"], "headers": _headers(got.get("hdrs")), "data": _data(got.get("data"))}
        )
    return letters


def _data(data: str | None) -> str:
    return base64.b64decode(data).decode(errors="replace") if data else ""


def _headers(hdrs: str | None) -> dict[str, str]:
    """A NATS header block (`NATS/1.0` then `Name: value` lines), as `nats stream get --json` gives it, base64."""
    if not hdrs:
        return {}
    lines = base64.b64decode(hdrs).decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if ": " in line)


async def test_nats_pub_to_our_subject_is_handled(system: System) -> None:
    product, order_id = uid("P"), uid("cli")
    await system.set_stock(product, 10)

    await nats(
        "pub", system.channel("order-events"), json.dumps({"orderId": order_id, "productId": product, "quantity": 3})
    )

    await eventually(lambda: system.stock(product), lambda s: s == 7, timeout=60, what="the CLI's order reserved")
    await eventually(
        lambda: asyncio.sleep(0, system.delivery_lines("inventory", "order-events", order_id, "handled")),
        lambda lines: len(lines) == 1,
        what="one handled delivery",
    )


async def test_a_poison_message_published_with_nats_is_read_from_the_dlt_stream(system: System) -> None:
    poison = f"not json {uid()}"
    await nats("pub", system.channel("order-events"), poison, "-H", "x-app:from-the-cli")
    stream = system.channel("order-events").replace(".", "_") + "-DLT"  # docs/contract.md: stream naming

    def ours(letters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [m for m in letters if m["data"] == poison and m["headers"].get("x-consumer") == "inventory-service"]

    letters = await eventually(
        lambda: dead_letters(stream),
        lambda found: len(ours(found)) == 1,
        timeout=60,
        interval=0.5,
        what="the poison message on the DLT stream, read with nats stream get",
    )
    [letter] = ours(letters)
    headers = letter["headers"]
    assert letter["subject"] == system.channel("order-events.DLT")
    assert headers["x-original-destination"] == system.channel("order-events")
    assert headers["x-attempts"] == "1"
    assert headers["x-app"] == "from-the-cli"  # the original headers travel with the dead letter
    assert headers["x-exception-type"]
    assert headers["x-failed-at"].endswith("Z")
