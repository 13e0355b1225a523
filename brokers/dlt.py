"""List and replay dead-lettered messages, on whichever broker `BROKER` selects.

    python -m brokers.dlt list   order-events [--limit 100] [--json]
    python -m brokers.dlt replay order-events [--limit 100] [--json]

`list` reads `<channel>.DLT` without consuming it and prints one JSON object per
message (`--json`, the default): position, key, `envelope` (our fields, filled from
ours, Spring Kafka's or RabbitMQ's dead-letter headers: `brokers.foreign_headers`),
every header shown losslessly (`base64:` for values that are not UTF-8), body.
`replay` publishes up to `--limit` dead letters back to their original destination
(original bytes and key, application headers byte for byte, every known framework's
retry and dead-letter headers dropped) and marks them replayed: running it twice
replays nothing twice (Kafka: a committed consumer group; RabbitMQ: consumed from the DLT queue;
NATS: an acked durable consumer). Consumers are idempotent, so a replayed message
whose effect already happened has no second effect. A body kept apart because it did not
fit the broker's limit with its envelope (`x-body-ref`, NATS) is put back first, checked
against `x-body-sha256` (`brokers.fitting`), so both show and replay the original bytes.
Channel names are contract names; `CHANNEL_NAMESPACE` applies as for the services.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from prometheus_client import CollectorRegistry

from brokers import create_transport
from config import Settings


async def run(command: str, channel: str, limit: int, settings: Settings) -> int:
    transport = create_transport(settings, CollectorRegistry(), app_name="dlt-cli")
    await transport.connect()
    try:
        resolved = settings.channel(channel)
        if command == "list":
            letters = await transport.list_dead_letters(resolved, limit)
        else:
            letters = await transport.replay_dead_letters(resolved, limit)
    finally:
        await transport.close()
    for letter in letters:
        print(json.dumps({"action": command, **letter.as_dict()}))
    verb = "listed" if command == "list" else "replayed"
    print(f"{verb} {len(letters)} dead letter(s) of {resolved}.DLT", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brokers.dlt", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["list", "replay"])
    parser.add_argument("channel", help="contract channel name, e.g. order-events")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="one JSON object per message (the default output)")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(args.command, args.channel, args.limit, settings))


if __name__ == "__main__":
    raise SystemExit(main())
