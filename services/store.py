"""Each service's store: embedded SQLite by default, PostgreSQL by URL.

Contract: `Database.transaction(fn)` runs `fn(tx)` in one database transaction,
one transaction at a time per process, and commits only if `fn` returns (SQLite
runs on the event loop's thread, PostgreSQL in a worker thread). SQL is written once with `?` placeholders and portable statements
(`INSERT … ON CONFLICT DO NOTHING`, conditional `UPDATE`); table names carry the
service's prefix so several services may share one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")


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


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlparse(url)
        self.dialect = "postgresql" if parsed.scheme.startswith("postgres") else "sqlite"
        self._conn: Any = None
        self._lock = threading.Lock()

    @property
    def autoincrement_pk(self) -> str:
        return "BIGSERIAL PRIMARY KEY" if self.dialect == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"

    def _connect(self) -> Any:
        if self.dialect == "postgresql":
            import psycopg

            return psycopg.connect(self.url.replace("postgresql+psycopg://", "postgresql://"))
        path = self.url.split("sqlite:///", 1)[-1]
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    async def connect(self, schema: Sequence[str] = ()) -> None:
        self._conn = await asyncio.to_thread(self._connect)
        for ddl in schema:
            await self.transaction(lambda tx, ddl=ddl: tx.execute(ddl))

    def _run(self, fn: Callable[[Tx], T]) -> T:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("database is not connected")
            if self.dialect == "sqlite":
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(Tx(conn, "?"))
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result
            with conn.transaction():
                return fn(Tx(conn, "%s"))

    async def transaction(self, fn: Callable[[Tx], T]) -> T:
        if self.dialect == "sqlite":
            # An embedded WAL transaction takes tens of microseconds: a thread hop would cost more.
            return self._run(fn)
        return await asyncio.to_thread(self._run, fn)

    async def ping(self) -> bool:
        try:
            return await self.transaction(lambda tx: tx.fetchone("SELECT 1")) == (1,)
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)
