"""The SQLite engine of the store (policy/store.py): the embedded default, one WAL file in the data dir
shared by the node's worker processes."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from policy.sqlite_files import open_file
from policy.store import Params, Store


class SqliteStore(Store):
    """One connection per process (sqlite3 connections must not cross a fork or a thread)."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 10000, other_thread: bool = False,
                 durable: bool = False):
        # NORMAL is crash-safe in WAL mode (a power loss may lose the last commits, never corrupt);
        # durable writers and the spool, which holds acknowledged mail, use FULL.
        self.conn = open_file(path, (), durable=durable, timeout=busy_timeout_ms / 1000,
                              check_same_thread=not other_thread)
        self.path = path
        self.where = str(path)
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
