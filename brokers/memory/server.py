"""The in-process "broker": channels as append-only logs and consumer-group state, by URL.

Everything a real broker would keep lives here, not in a `Transport`, so two transports built
with the same `memory://<name>` URL share it: one dropped without settling leaves its messages
unacknowledged (claimed by a reader that is gone) and the next one reads them again.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Protocol


class Claimant(Protocol):
    """Who holds a claim: a subscription's reader. A claim of a reader that is no longer `alive`
    counts as released (its settlement is fenced off)."""

    @property
    def alive(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Record:
    """One message of a channel log: `offset` is its position (0-based)."""

    offset: int
    key: str
    body: bytes
    headers: dict[str, str]


@dataclass(eq=False)
class RetryItem:
    """A message waiting for its next delivery (attempt in its `x-attempts` header) at `due`
    (`time.monotonic()` seconds); `claimant` is the reader it is delivered to, if any."""

    due: float
    key: str
    body: bytes
    headers: dict[str, str]
    claimant: Claimant | None = None


class Signal:
    """Wakes every waiter at once (readers waiting for something to read)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def fire(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        """Return when fired or after `timeout_s`, whichever comes first."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait([waiter], timeout=max(timeout_s, 0.0))
        finally:
            self._waiters.discard(waiter)


@dataclass(eq=False)
class ChannelLog:
    """An append-only log of records; `changed` fires on every append and group change."""

    name: str
    records: list[Record] = field(default_factory=list)
    changed: Signal = field(default_factory=Signal)

    def append(self, key: str, body: bytes, headers: dict[str, str]) -> Record:
        record = Record(len(self.records), key, bytes(body), dict(headers))
        self.records.append(record)
        self.changed.fire()
        return record


class Group:
    """One consumer name's progress on one channel: a committed offset (everything before it is
    settled), the offsets settled beyond it, the claims of the readers sharing the work, and the
    retries waiting for their due time."""

    def __init__(self, log: ChannelLog) -> None:
        self.log = log
        self.committed = 0
        self.acked: set[int] = set()
        self.claims: dict[int, Claimant] = {}
        self.retries: list[tuple[float, int, RetryItem]] = []
        self._order = itertools.count()

    # --- reading ---------------------------------------------------------------------
    def claim(self, reader: Claimant, limit: int) -> list[Record | RetryItem]:
        """Up to `limit` messages for `reader`: due retries first (due order), then log records
        from the committed offset on. A record whose key has an earlier record still claimed by
        another reader (or skipped here) is left for later: each key's records go in order."""
        now = time.monotonic()
        taken: list[Record | RetryItem] = []
        for _, _, item in sorted(self.retries):
            if len(taken) >= limit or item.due > now:
                break
            if item.claimant is None or not item.claimant.alive:
                item.claimant = reader
                taken.append(item)
        blocked: set[str] = set()
        for record in self.log.records[self.committed :]:
            if len(taken) >= limit:
                break
            if record.offset in self.acked:
                continue
            holder = self.claims.get(record.offset)
            if holder is reader:
                continue
            if record.key in blocked or (holder is not None and holder.alive):
                blocked.add(record.key)
                continue
            self.claims[record.offset] = reader
            taken.append(record)
        return taken

    def next_due(self) -> float | None:
        """When the earliest unclaimed retry is due (`time.monotonic()`), None without one."""
        dues = [item.due for _, _, item in self.retries if item.claimant is None or not item.claimant.alive]
        return min(dues, default=None)

    # --- settling --------------------------------------------------------------------
    def holds(self, reader: Claimant, item: Record | RetryItem) -> bool:
        """Whether `reader`'s claim on `item` still stands (a stale reader's settlement is ignored)."""
        if isinstance(item, RetryItem):
            return item.claimant is reader and any(entry is item for _, _, entry in self.retries)
        return self.claims.get(item.offset) is reader

    def ack(self, item: Record | RetryItem) -> None:
        if isinstance(item, RetryItem):
            self.retries = [entry for entry in self.retries if entry[2] is not item]
            heapq.heapify(self.retries)
        else:
            self.claims.pop(item.offset, None)
            self.acked.add(item.offset)
            while self.committed in self.acked:
                self.acked.discard(self.committed)
                self.committed += 1
        self.log.changed.fire()

    def release(self, item: Record | RetryItem) -> None:
        """Give `item` back: it is read again (a retry at once, a record from its offset on)."""
        if isinstance(item, RetryItem):
            item.claimant = None
        else:
            self.claims.pop(item.offset, None)
        self.log.changed.fire()

    def release_all(self, reader: Claimant) -> None:
        for offset in [o for o, holder in self.claims.items() if holder is reader]:
            del self.claims[offset]
        for _, _, item in self.retries:
            if item.claimant is reader:
                item.claimant = None
        self.log.changed.fire()

    def add_retry(self, item: RetryItem) -> None:
        heapq.heappush(self.retries, (item.due, next(self._order), item))
        self.log.changed.fire()

    def lag(self) -> int:
        """Records of the log not settled yet (pending retries are not counted, as on Kafka)."""
        return len(self.log.records) - self.committed - len(self.acked)


class Server:
    """The state behind one `memory://<name>` URL."""

    def __init__(self) -> None:
        self.logs: dict[str, ChannelLog] = {}
        self.groups: dict[tuple[str, str], Group] = {}
        self.replayed: dict[str, int] = {}
        """Per dead-letter channel: how many of its messages were replayed (each is, once)."""

    def log(self, channel: str) -> ChannelLog:
        found = self.logs.get(channel)
        if found is None:
            found = self.logs[channel] = ChannelLog(channel)
        return found

    def group(self, channel: str, consumer: str) -> Group:
        """The consumer name's group on `channel`, created on first use (reading from the start)."""
        found = self.groups.get((channel, consumer))
        if found is None:
            found = self.groups[(channel, consumer)] = Group(self.log(channel))
        return found


_servers: dict[str, Server] = {}


def server(url: str) -> Server:
    """The server of `url` (`memory://<name>`), created on first use; it lives as long as the process."""
    found = _servers.get(url)
    if found is None:
        found = _servers[url] = Server()
    return found


def forget(url: str) -> None:
    """Drop the state of `url` (a fresh broker next time; for tests)."""
    _servers.pop(url, None)
