"""The shared store: tenants, credentials, suppressions, counters, events, audit, secrets, complaints, cases.

Two engines behind one interface. SQLite (the embedded default): one WAL file in the data dir, shared
by the node's worker processes. PostgreSQL (`store.url`, policy/store_postgres.py): shared by several
nodes. `open_store` picks one from the settings; nothing outside policy/ knows which is in use. SQL is
written once, in the subset both engines speak, with `?` or `:name` parameters; the schema is the
named migrations of policy/schema.py, applied under a lock so nodes and workers starting together
do not race.

Code on an event loop reaches the store through one calling convention, `await store.call(fn, *args)`:
SQLite runs `fn` inline (its calls take microseconds, less than a hop to a thread would cost), PostgreSQL
in a thread of the store's own, so a round trip to the server, or a wait for a connection, holds up only
the command that needs it and never the other sessions of the worker.
"""
from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

import psycopg

from policy.schema import MIGRATIONS

if TYPE_CHECKING:
    from policy.settings import Settings

T = TypeVar("T")
Params = Sequence[Any] | dict[str, Any]
StoreError = (sqlite3.Error, psycopg.Error)      # what a failing store raises, whichever the engine


def utcnow() -> str:
    """Timestamps are ISO 8601 UTC strings: sortable, readable in `--json`, unambiguous across nodes.
    Formatted once per second (several rows are stamped per message)."""
    global _stamped
    second = int(time.time())
    if _stamped[0] != second:
        _stamped = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return _stamped[1]


_stamped = (0, "")


def epoch(stamp: str) -> float:
    """Seconds since the epoch of a `utcnow()` stamp ("" is 0)."""
    if not stamp:
        return 0.0
    parsed = datetime.fromisoformat(stamp)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


class Result(Protocol):
    """What `execute` returns: a DB-API cursor's reading side."""
    rowcount: int
    description: Any

    def fetchone(self) -> Sequence[Any] | None: ...
    def fetchall(self) -> Sequence[Sequence[Any]]: ...


class Store(ABC):
    """The engine-neutral interface; one instance per process or thread, as a connection is."""

    where: str      # the file or server, for messages (never a password)

    @abstractmethod
    def execute(self, sql: str, params: Params = ()) -> Result: ...

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Params]) -> int:
        """Run `sql` once per row; returns the rows changed."""

    @abstractmethod
    def exclusive(self) -> AbstractContextManager:
        """A write transaction that no other writer runs alongside (read-modify-write without races),
        on every process and node sharing the store."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager:
        """Writes committed together, or not at all: one commit for many rows (see policy/groupcommit)."""

    @abstractmethod
    def close(self) -> None: ...

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` (which uses this store) from an event loop, without blocking it (see the module doc)."""
        return fn(*args)

    def one(self, sql: str, params: Params = ()) -> dict | None:
        cur = self.execute(sql, params)
        row = cur.fetchone()
        return dict(zip([c[0] for c in cur.description], row)) if row else None

    def all(self, sql: str, params: Params = ()) -> list[dict]:
        cur = self.execute(sql, params)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def insert(self, table: str, row: dict[str, Any]) -> None:
        """Table and column names come from the code, never from input."""
        self.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))

    def update(self, table: str, key: tuple[str, Any], values: dict[str, Any]) -> int:
        sets = ", ".join(f"{column} = ?" for column in values)
        return self.execute(f"UPDATE {table} SET {sets} WHERE {key[0]} = ?", [*values.values(), key[1]]).rowcount

    def migrate(self) -> list[str]:
        """Apply pending migrations, under the store's exclusive lock."""
        applied: list[str] = []
        with self.exclusive():
            self.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied TEXT)")
            done = {r["name"] for r in self.all("SELECT name FROM _migrations")}
            for name, statements in MIGRATIONS:
                if name not in done:
                    for ddl in statements:
                        self.execute(self.ddl(ddl))
                    self.execute("INSERT INTO _migrations VALUES (?, ?)", [name, utcnow()])
                    applied.append(name)
        return applied

    def ddl(self, statement: str) -> str:
        """A migration statement in this engine's spelling."""
        return statement

    # -- counters: one atomic upsert per hit, shared by all workers and nodes

    def hit(self, key: str, window: float, now: float | None = None) -> int:
        """Count one event for `key` in a window that starts at its first event; return the count."""
        now = time.time() if now is None else now
        row = self.execute(
            "INSERT INTO counters (key, started, count) VALUES (?, ?, 1) "
            "ON CONFLICT(key) DO UPDATE SET "
            "count = CASE WHEN ? - counters.started >= ? THEN 1 ELSE counters.count + 1 END, "
            "started = CASE WHEN ? - counters.started >= ? THEN excluded.started ELSE counters.started END "
            "RETURNING count", [key, now, now, window, now, window]).fetchone()
        return row[0]

    def count(self, key: str, window: float, now: float | None = None) -> int:
        """Events for `key` in its current window (0 once the window has passed)."""
        now = time.time() if now is None else now
        row = self.execute("SELECT count FROM counters WHERE key = ? AND ? - started < ?",
                           [key, now, window]).fetchone()
        return row[0] if row else 0

    def reset(self, key: str) -> None:
        self.execute("DELETE FROM counters WHERE key = ?", [key])


def open_store(settings: "Settings", *, other_thread: bool = False, durable: bool = False) -> Store:
    """The configured store: PostgreSQL when `store.url` is set, else the SQLite file in data_dir.
    `other_thread`: used by one thread other than the one opening it. `durable`: every commit is on
    disk before it returns, for writers that mark their input done elsewhere right after (inbound)."""
    if settings.store.url:
        from policy.store_postgres import PostgresStore
        return PostgresStore(settings.store.url, settings.store.acquire_timeout)
    return SqliteStore(settings.store_path, other_thread=other_thread, durable=durable)


def is_set_up(settings: "Settings") -> bool:
    """Whether `init` ran for this node: its SQLite store exists or, on a shared store, its data dir."""
    return settings.data_dir.exists() if settings.store.url else settings.store_path.exists()


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
