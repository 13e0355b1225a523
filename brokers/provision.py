"""Provision what the four services use, on whichever broker `BROKER` selects (for operators).

    python -m brokers.provision [--dry-run] [--dlt-listener CONSUMER ...]

For the configured BROKER, BROKER_URL and CHANNEL_NAMESPACE (and RETRY_*, KAFKA_*,
NATS_STREAM_REPLICAS, as the services read them): every channel of the contract with its
consumers, retry tiers and dead-letter channel, built by the same transport code as the
services (`brokers.provisioning`): Kafka topics, JetStream streams, RabbitMQ exchanges and
quorum queues. Prints one line per object: `created`, `exists`, `MISMATCH (differences)`
(left as it is), `would create` (--dry-run: nothing is created) or `FAILED (the broker's
refusal)`. `--dlt-listener` also provisions that consumer's dead-letter listener queues
(RabbitMQ `<channel>.DLT.<consumer>`; the notification service listens as
`notification-service`, or its CONSUMER_NAMES name). Consumer names follow CONSUMER_NAMES. Services started with PROVISION=false rely on this having run.

Exit status: 0 when every object exists or was created (mismatches included), 1 when the
broker refused to create some object, 2 when the configuration is invalid or the broker
cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from prometheus_client import CollectorRegistry

from brokers import Subscription, broker_url, create_transport
from brokers.credentials import redacted
from brokers.provisioning import FAILED, MISMATCH, WOULD_CREATE
from config import Settings
from services.events import CHANNEL_EVENTS, CONSUMERS  # pydantic models and two dicts: no service is built

CONNECT_TIMEOUT_S = 20.0
EXIT_FAILED = 1
EXIT_UNREACHABLE = 2


async def _unused(_: Any) -> None:
    """The handler of the subscriptions registered only to be provisioned (never started)."""


def register(transport: Any, settings: Settings, listeners: list[str]) -> None:
    """Make `transport` use what the services use: every contract channel published, subscribed
    by each of its consumers (with retry tiers and DLT), and dead-letter `listeners`."""
    for contract, model in CHANNEL_EVENTS.items():
        channel = settings.channel(contract)
        transport.declare_publisher(channel, model, "")
        for service in CONSUMERS.get(contract, ()):  # CONSUMER_NAMES applies as in the services
            transport.subscribe(Subscription(channel, settings.consumer_name(service), _unused, model))
        for listener in listeners:
            transport.listen_dead_letters(channel, listener, _unused)


async def run(settings: Settings, *, dry_run: bool, listeners: list[str]) -> int:
    transport = create_transport(settings, CollectorRegistry(), app_name="provision-cli")
    register(transport, settings, listeners)
    where = f"{settings.broker} at {_without_password(broker_url(settings))}"
    try:
        await asyncio.wait_for(transport.connect(), CONNECT_TIMEOUT_S)
        outcomes = await transport.provision(dry_run=dry_run)
    except Exception as exc:  # noqa: BLE001 - any failure to talk to the broker is reported the same way
        print(f"error: cannot provision on {where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        try:
            await transport.close()
        except Exception as exc:  # noqa: BLE001 - closing is best effort
            print(f"warning: closing the connection failed: {exc}", file=sys.stderr)
    for outcome in outcomes:
        print(outcome.line())
    counts = {kind: sum(o.outcome == kind for o in outcomes) for kind in (MISMATCH, FAILED, WOULD_CREATE)}
    print(
        f"{len(outcomes)} object(s) on {where}" + "".join(f", {n} {kind.lower()}" for kind, n in counts.items() if n),
        file=sys.stderr,
    )
    return EXIT_FAILED if counts[FAILED] else 0


def _without_password(url: str) -> str:
    """`url` with any password (`user:password@`, on every broker) replaced by `***`."""
    return redacted(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brokers.provision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="report what would be created; create nothing")
    parser.add_argument(
        "--dlt-listener",
        action="append",
        default=[],
        metavar="CONSUMER",
        help="a consumer that listens to every channel's dead letters (repeatable), e.g. notification-service",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return asyncio.run(run(settings, dry_run=args.dry_run, listeners=args.dlt_listener))


if __name__ == "__main__":
    raise SystemExit(main())
