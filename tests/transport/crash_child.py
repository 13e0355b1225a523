"""A consumer process for the process-kill case: `python -m tests.transport.crash_child NAME
NAMESPACE CHANNEL CONSUMER` subscribes, prints `ready`, then `received <n>` for each message it
is handed, whose handler never returns, until the test kills the process (SIGKILL)."""

from __future__ import annotations

import asyncio
import sys

from tests.transport.harness import Harness, Ping, Recorder


async def main(name: str, namespace: str, channel: str, consumer: str) -> None:
    harness = Harness(name, namespace)
    t, _ = harness.transport()

    async def hang(event: Ping) -> None:
        print(f"received {event.n}", flush=True)
        await asyncio.Event().wait()

    harness.subscribe(t, channel, consumer, Recorder(hang))
    await t.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
