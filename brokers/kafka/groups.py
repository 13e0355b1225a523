"""Keeps every Kafka subscriber of this process in its consumer group.

aiokafka ends a consumer's group coordination for good on a fatal join error (e.g.
InconsistentGroupProtocol: the group's members offer no assignor in common with ours, which happens
when our member was evicted — paused past its session timeout — while a foreign client held the
group); FastStream's loop then only logs an error every 5 s while the process looks healthy.
`GroupWatch` reads each group's members from the broker (DescribeGroups, by this process's client
id), counts a subscriber that is out of its group, reports it (`joined` → `/ready`), and restarts it
with backoff until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

log = logging.getLogger("switchboard.kafka.groups")

CHECK_INTERVAL_S = 5.0
"""How often the groups are described (one DescribeGroups round trip per group)."""
RESTART_BACKOFF_S = (5.0, 10.0, 20.0, 40.0, 60.0)
"""Waits between restarts of a subscriber that stays out of its group (the last one repeats)."""


def process_client_id() -> str:
    """The Kafka client id of this process's clients: unique per process, so a group's member list
    tells our members from a replica's or a foreign client's (and operators see who is who)."""
    return f"switchboard-{socket.gethostname()}-{os.getpid()}"


@dataclass
class _Watched:
    group: str
    destination: str
    consumer: str
    subscriber: Any  # a FastStream Kafka subscriber: start(), stop(), running, consumer
    missing_since: float | None = None
    restarts: int = 0
    next_restart_at: float = 0.0
    out: bool = field(default=False)


class GroupWatch:
    """Restarts the subscribers whose consumer is out of its group; `joined` is False meanwhile."""

    def __init__(
        self,
        client_id: str,
        admin: Callable[[], Awaitable[AIOKafkaAdminClient]],
        on_join_failure: Callable[[str, str], None],
        grace_s: float,
    ) -> None:
        self.client_id = client_id
        self._admin = admin
        self._on_join_failure = on_join_failure
        self._grace_s = grace_s
        self._watched: list[_Watched] = []
        self._task: asyncio.Task[None] | None = None

    def watch(self, group: str, destination: str, consumer: str, subscriber: Any) -> None:
        self._watched.append(_Watched(group, destination, consumer, subscriber))

    @property
    def joined(self) -> bool:
        """False while a watched subscriber is known to be out of its group."""
        return not any(w.out for w in self._watched)

    def start(self) -> None:
        if self._task is None and self._watched:
            self._task = asyncio.create_task(self._run(), name="kafka-group-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - the broker may be away; checked again next time
                log.debug("consumer groups not described: %s", exc)

    async def check(self) -> None:
        """Describe the groups, then restart what stayed out of its group past the grace period."""
        running = [w for w in self._watched if w.out or w.subscriber.running]
        if not running:
            return
        members = await self._our_members({w.group for w in running})
        now = time.monotonic()
        for group in {w.group for w in running}:
            in_group = [w for w in running if w.group == group]
            self._mark(in_group, members.get(group, 0), now)
        for w in running:
            if w.out and now >= w.next_restart_at:
                await self._restart(w, now)

    def _mark(self, watched: list[_Watched], our_members: int, now: float) -> None:
        """Fewer members of ours than running subscribers of the group: which one is out cannot be
        told (its old assignment may linger), so all of them are restarted (one rebalance)."""
        if our_members >= len(watched):
            for w in watched:
                w.missing_since, w.out, w.restarts = None, False, 0
            return
        for w in watched:
            w.missing_since = w.missing_since or now
            if not w.out and now - w.missing_since >= self._grace_s:
                w.out, w.next_restart_at = True, now
                self._on_join_failure(w.destination, w.consumer)
                log.error(
                    "the subscriber of %s is not a member of consumer group %s (its join failed); restarting it",
                    w.destination,
                    w.group,
                )

    async def _restart(self, w: _Watched, now: float) -> None:
        w.next_restart_at = now + RESTART_BACKOFF_S[min(w.restarts, len(RESTART_BACKOFF_S) - 1)]
        w.restarts += 1
        try:
            await w.subscriber.stop()
            await w.subscriber.start()
        except Exception as exc:  # noqa: BLE001 - reported, retried after the backoff
            self._on_join_failure(w.destination, w.consumer)
            log.error(
                "subscriber of %s could not join consumer group %s (%s: %s); next attempt in %.0f s",
                w.destination,
                w.group,
                type(exc).__name__,
                exc,
                w.next_restart_at - now,
            )
        else:
            w.missing_since = None
            log.info("subscriber of %s rejoined consumer group %s", w.destination, w.group)

    async def _our_members(self, groups: set[str]) -> dict[str, int]:
        admin = await self._admin()
        counts: dict[str, int] = {}
        for response in await admin.describe_consumer_groups(sorted(groups)):
            for described in response.to_object()["groups"]:
                counts[described["group"]] = sum(1 for m in described["members"] if m["client_id"] == self.client_id)
        return counts
