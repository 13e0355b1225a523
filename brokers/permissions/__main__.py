"""`python -m brokers.permissions`: the secured profile's grants (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from brokers.kafka.permissions import apply_kafka_acls, kafka_acls
from brokers.nats.permissions import nats_authorization, nats_permissions
from brokers.permissions import ADMIN, ServiceChannels, discover, read_passwords
from brokers.rabbit.permissions import VHOST, rabbit_definitions, rabbit_permissions


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
    parser = argparse.ArgumentParser(prog="python -m brokers.permissions", description="Per-service broker grants of the secured profile.")
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
