"""The SQLite store: commits stay on the event loop, WAL checkpoints run beside it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from services.store import Database, Tx
from tests.support.system import eventually

ROWS = 2000
ROW_BYTES = 1000


async def test_committed_pages_reach_the_database_file_without_a_commit_checkpointing(tmp_path: Path) -> None:
    """Commits never run SQLite's automatic checkpoint (it would block the event loop for an
    fsync); the background checkpointer still copies the WAL into the database file."""
    path = tmp_path / "store.db"
    db = Database(f"sqlite:///{path}")
    await db.connect(["CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"])
    try:
        empty_size = path.stat().st_size

        def fill(tx: Tx) -> None:
            for i in range(ROWS):
                tx.execute("INSERT INTO t (id, body) VALUES (?, ?)", (i, "x" * ROW_BYTES))

        await db.transaction(fill)
        assert path.stat().st_size == empty_size, "a COMMIT checkpointed the WAL on the event loop"
        await eventually(
            lambda: asyncio.sleep(0, path.stat().st_size),
            lambda size: size >= ROWS * ROW_BYTES,
            timeout=10,
            what="the rows copied from the WAL into the database file",
        )
        assert await db.transaction(lambda tx: tx.fetchone("SELECT COUNT(*) FROM t")) == (ROWS,)
    finally:
        await db.close()


async def test_transactions_within_the_first_ones_join_window_share_its_commit_and_fail_alone(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'group.db'}")
    await db.connect(["CREATE TABLE t (k TEXT PRIMARY KEY)"])
    statements: list[str] = []
    db._connection().set_trace_callback(statements.append)

    def insert(key: str) -> Callable[[Tx], int]:
        return lambda tx: tx.execute("INSERT INTO t (k) VALUES (?)", (key,))

    def insert_then_fail(tx: Tx) -> None:
        tx.execute("INSERT INTO t (k) VALUES ('b')")
        raise ValueError("refused")

    try:
        first = asyncio.create_task(db.transaction(insert("a"), join_window_s=0.5))
        await asyncio.sleep(0.01)  # the others come a few loop turns later, as concurrent POSTs do
        second = asyncio.create_task(db.transaction(insert_then_fail))
        third = asyncio.create_task(db.transaction(insert("c")))
        async with asyncio.timeout(5):
            await first
            await third
            with pytest.raises(ValueError, match="refused"):
                await second

        assert statements.count("COMMIT") == 1
        assert await db.transaction(lambda tx: tx.fetchall("SELECT k FROM t ORDER BY k")) == [("a",), ("c",)]
    finally:
        await db.close()
