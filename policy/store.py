"""The shared store: tenants, credentials, suppressions, counters, events, audit, secrets, complaints, cases.

Two engines behind one interface. SQLite (the embedded default): one WAL file in the data dir, shared
by the node's worker processes. PostgreSQL (`store.url`, policy/store_postgres.py): shared by several
nodes. Each engine is a module of its own (policy/store_sqlite.py, policy/store_postgres.py), and
`open_store` (policy/engines.py) picks one from the settings; nothing outside policy/ knows which is in
use. SQL is
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
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, UTC
from typing import Any, Protocol, TypeVar
from collections.abc import Callable

import psycopg

from policy.schema import MIGRATIONS

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
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


class Result(Protocol):
    """What `execute` returns: a DB-API cursor's reading side."""
    @property
    def rowcount(self) -> int: ...
    @property
    def description(self) -> Any: ...

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

    def row(self, sql: str, params: Params = ()) -> dict:
        """The row that `sql` always gives (an aggregate, or a row this transaction has just written)."""
        row = self.one(sql, params)
        if row is None:
            raise LookupError(f"no row from {sql.split(' WHERE ')[0]}")
        return row

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

    def hit(self, key: str, window: float, now: float | None = None, n: int = 1) -> int:
        """Count `n` events for `key` in a window that starts at its first event; return the count."""
        now = time.time() if now is None else now
        row = self.execute(
            "INSERT INTO counters (key, started, count) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET "
            "count = CASE WHEN ? - counters.started >= ? THEN excluded.count ELSE counters.count + excluded.count END, "
            "started = CASE WHEN ? - counters.started >= ? THEN excluded.started ELSE counters.started END "
            "RETURNING count", [key, now, n, now, window, now, window]).fetchone()
        assert row is not None            # an upsert RETURNING gives its row
        return row[0]

    def count(self, key: str, window: float, now: float | None = None) -> int:
        """Events for `key` in its current window (0 once the window has passed)."""
        now = time.time() if now is None else now
        row = self.execute("SELECT count FROM counters WHERE key = ? AND ? - started < ?",
                           [key, now, window]).fetchone()
        return row[0] if row else 0

    def reset(self, key: str) -> None:
        self.execute("DELETE FROM counters WHERE key = ?", [key])
