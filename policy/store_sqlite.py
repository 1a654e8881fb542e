"""The SQLite engine of the store (policy/store.py): the embedded default, one WAL file in the data dir
shared by the node's worker processes."""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from policy.store import Params, Store


def enable_wal(conn: sqlite3.Connection, wait: float = 10.0) -> None:
    """Switch a database file to WAL mode. The switch needs the file to itself, and SQLite does not wait
    for that (no busy handler), so processes opening a new file together retry instead of failing."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SqliteStore(Store):
    """One connection per process (sqlite3 connections must not cross a fork or a thread)."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 10000, other_thread: bool = False,
                 durable: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000,
                                    check_same_thread=not other_thread)
        self.path = path
        self.where = str(path)
        enable_wal(self.conn)
        # NORMAL is crash-safe in WAL mode (a power loss may lose the last commits, never corrupt);
        # durable writers and the spool, which holds acknowledged mail, use FULL.
        self.conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.conn.execute("PRAGMA foreign_keys=ON")

    def execute(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Params]) -> int:
        return self.conn.executemany(sql, rows).rowcount

    def exclusive(self) -> AbstractContextManager:
        """SQLite has one writer at a time: every write transaction is exclusive."""
        return self.transaction()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE takes SQLite's single write lock up front (no SQLITE_BUSY on a later upgrade)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()
