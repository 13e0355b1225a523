"""Each service's store: embedded SQLite by default, PostgreSQL by URL.

Contract: `Database.transaction(fn)` runs `fn(tx)` in one database transaction,
one transaction at a time per process, and commits only if `fn` returns (SQLite
runs on the event loop's thread, PostgreSQL in a worker thread). On SQLite, calls made in
the same event-loop turn, or within the first one's `join_window_s`, share one COMMIT (group
commit, each `fn` in its own savepoint): each still commits or fails on its own, and returns
only once durable. Inside `async with db.batch():` (a consumer batch) every `transaction(fn)`
of the same task is a savepoint of one outer transaction instead: `fn`'s changes vanish alone
if it raises, and all the others are committed together when the block exits (or all rolled
back if the block raises). Other tasks wait for the batch to end.

SQL is written once with `?` placeholders and portable statements
(`INSERT … ON CONFLICT DO NOTHING`, conditional `UPDATE`, and in a schema
`ALTER TABLE … ADD COLUMN IF NOT EXISTS`, which `connect` runs only when the column is missing);
table names carry the service's prefix so several services may share one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from services.tasks import cancel_and_wait

T = TypeVar("T")
log = logging.getLogger("switchboard.store")
CHECKPOINT_INTERVAL_S = 1.0
ADD_COLUMN_IF_NOT_EXISTS = re.compile(
    r"\s*ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+IF\s+NOT\s+EXISTS\s+((\w+)\b.*)", re.IGNORECASE | re.DOTALL
)


class Tx:
    """A cursor inside one transaction."""

    def __init__(self, conn: Any, placeholder: str) -> None:
        self._conn = conn
        self._placeholder = placeholder

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        cur = self._conn.cursor()
        cur.execute(self._sql(sql), tuple(params))
        return cur.rowcount

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        cur = self._conn.cursor()
        cur.execute(self._sql(sql), tuple(params))
        return cur.fetchone()

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self._conn.cursor()
        cur.execute(self._sql(sql), tuple(params))
        return list(cur.fetchall())

    def first_time(self, table: str, key: str) -> bool:
        """Record `key` in a processed-keys table; False if it was there already."""
        return self.execute(f"INSERT INTO {table} (key) VALUES (?) ON CONFLICT DO NOTHING", (key,)) == 1


class WalCheckpointer:
    """Copies an SQLite WAL back into the database file every CHECKPOINT_INTERVAL_S, on its own
    thread with its own connection. PASSIVE: it never waits for, nor blocks, the writer.
    SQLite's automatic checkpoint would run inside whichever COMMIT crosses 1000 WAL pages, on
    the event loop's thread, and stall every request and message for its fsync (a tail-latency
    cost). Every use of the connection, its close included, runs on that one thread, in order."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"wal-checkpoint:{self.path}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)  # after a running checkpoint
        self._thread.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            try:
                await loop.run_in_executor(self._thread, self._checkpoint)
            except sqlite3.Error as exc:
                log.warning(
                    "WAL checkpoint of %s failed (retried in %.0f s): %s", self.path, CHECKPOINT_INTERVAL_S, exc
                )

    def _checkpoint(self) -> None:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, isolation_level=None)
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_in_batch: contextvars.ContextVar[Database | None] = contextvars.ContextVar("in_batch", default=None)
SAVEPOINT = "handler"


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlparse(url)
        self.dialect = "postgresql" if parsed.scheme.startswith("postgres") else "sqlite"
        self._conn: Any = None
        self._busy = asyncio.Lock()
        self._queued: list[tuple[Callable[[Tx], Any], asyncio.Future[Any], contextvars.Context]] = []
        self._committer: asyncio.Task[None] | None = None
        self._checkpointer: WalCheckpointer | None = None
        self._begin = "BEGIN" if self.dialect == "postgresql" else "BEGIN IMMEDIATE"
        self._placeholder = "%s" if self.dialect == "postgresql" else "?"

    @property
    def autoincrement_pk(self) -> str:
        return "BIGSERIAL PRIMARY KEY" if self.dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"

    def _connect(self) -> Any:
        if self.dialect == "postgresql":
            import psycopg

            # transactions are explicit statements (BEGIN/SAVEPOINT/COMMIT), as on SQLite
            return psycopg.connect(self.url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        path = self.url.split("sqlite:///", 1)[-1]
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if path != ":memory:":
            conn.execute("PRAGMA wal_autocheckpoint=0")  # WalCheckpointer does it off the loop
            self._checkpointer = WalCheckpointer(path)
        return conn

    async def connect(self, schema: Sequence[str] = ()) -> None:
        self._conn = await asyncio.to_thread(self._connect)
        for ddl in schema:
            await self.transaction(functools.partial(self._schema_statement, ddl=ddl))
        if self._checkpointer is not None:
            self._checkpointer.start()

    def _schema_statement(self, tx: Tx, ddl: str) -> None:
        """`ADD COLUMN IF NOT EXISTS` runs only if the column is missing: SQLite lacks the clause, and
        PostgreSQL would take an exclusive lock on the table (other replicas use it) even to do nothing."""
        added = ADD_COLUMN_IF_NOT_EXISTS.fullmatch(ddl)
        if added is None:
            tx.execute(ddl)
            return
        table, definition, column = added.groups()
        if self.dialect == "postgresql":
            if not tx.fetchone(
                "SELECT 1 FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ? AND column_name = ?",
                (table.lower(), column.lower()),
            ):
                tx.execute(ddl)
        elif all(row[1] != column for row in tx.fetchall(f"PRAGMA table_info({table})")):
            tx.execute(f"ALTER TABLE {table} ADD COLUMN {definition}")

    def _connection(self) -> Any:
        if self._conn is None:
            raise RuntimeError("database is not connected")
        return self._conn

    def _enclosed(self, begin: str, commit: str, rollback: str, fn: Callable[[Tx], T]) -> T:
        conn = self._connection()
        conn.execute(begin)
        try:
            result = fn(Tx(conn, self._placeholder))
        except BaseException:
            conn.execute(rollback)
            raise
        conn.execute(commit)
        return result

    def _run(self, fn: Callable[[Tx], T]) -> T:
        return self._enclosed(self._begin, "COMMIT", "ROLLBACK", fn)

    def _run_savepoint(self, fn: Callable[[Tx], T]) -> T:
        return self._enclosed(
            f"SAVEPOINT {SAVEPOINT}", f"RELEASE SAVEPOINT {SAVEPOINT}", f"ROLLBACK TO SAVEPOINT {SAVEPOINT}", fn
        )

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self.dialect == "sqlite":
            # An embedded WAL transaction takes tens of microseconds: a thread hop would cost more.
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def transaction(self, fn: Callable[[Tx], T], *, join_window_s: float = 0.0) -> T:
        """`join_window_s`: on SQLite, a group commit started by this call waits that long for
        other transactions to share its COMMIT (for callers that are often concurrent)."""
        if _in_batch.get() is self:
            return await self._call(self._run_savepoint, fn)
        if self.dialect == "sqlite":
            return await self._group_commit(fn, join_window_s)
        async with self._busy:
            return await self._call(self._run, fn)

    async def _group_commit(self, fn: Callable[[Tx], T], join_window_s: float) -> T:
        """Transactions asked for in the same loop turn or join window (concurrent HTTP requests) run as
        savepoints of one transaction and share its COMMIT; each still fails alone, and runs in
        its caller's context (trace context, for the events it writes), not the committer's."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((fn, done, contextvars.copy_context()))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued(join_window_s))
        return await done

    async def _commit_queued(self, join_window_s: float) -> None:
        await asyncio.sleep(join_window_s)  # let concurrent requests queue up
        while self._queued:
            group, self._queued = self._queued, []
            outcomes: list[tuple[bool, Any]] = []
            try:
                async with self.batch():
                    for fn, _, caller in group:
                        try:
                            outcomes.append((True, caller.run(self._run_savepoint, fn)))
                        except Exception as exc:  # noqa: BLE001 - handed to its caller
                            outcomes.append((False, exc))
            except Exception as exc:  # noqa: BLE001 - the shared COMMIT failed: every caller sees it
                outcomes = [(False, exc)] * len(group)
            for (_, done, _), (ok, value) in zip(group, outcomes, strict=True):
                if done.done():
                    continue
                if ok:
                    done.set_result(value)
                else:
                    done.set_exception(value)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """One transaction around a consumer batch (module docstring)."""
        async with self._busy:
            await self._call(self._statement, self._begin)
            token = _in_batch.set(self)
            try:
                yield
                await self._call(self._statement, "COMMIT")
            except BaseException:
                await self._call(self._rollback_if_open)
                raise
            finally:
                _in_batch.reset(token)

    def _statement(self, sql: str) -> None:
        self._connection().execute(sql)

    def _rollback_if_open(self) -> None:
        conn = self._connection()
        open_tx = conn.in_transaction if self.dialect == "sqlite" else conn.info.transaction_status != 0
        if open_tx:
            conn.execute("ROLLBACK")

    async def ping(self) -> bool:
        try:
            return await self.transaction(lambda tx: tx.fetchone("SELECT 1")) == (1,)
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def close(self) -> None:
        if self._checkpointer is not None:
            await self._checkpointer.stop()
            self._checkpointer = None
        if self._conn is not None:
            async with self._busy:
                conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)
