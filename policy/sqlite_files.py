"""The one way the node opens its SQLite files (the store, each spool shard, the inbound mailbox): WAL, the
durability the file needs, and the file's named migrations, each applied once.

Migrations are (name, step) pairs, applied in order under SQLite's write lock and recorded in the file's
`_migrations` table, so the processes of a node that open one file together apply each step once. A step
is SQL (statements separated by ";") or a function of the connection. Files made before their migrations
had names already hold some of what the first steps make: those steps are written to be idempotent
(CREATE ... IF NOT EXISTS, `add_column`)."""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from policy.store import utcnow

Step = str | Callable[[sqlite3.Connection], None]
Migrations = Sequence[tuple[str, Step]]


def open_file(path: Path, migrations: Migrations, *, durable: bool = True, secure_delete: bool = False,
              timeout: float = 30.0, check_same_thread: bool = True) -> sqlite3.Connection:
    """An autocommit connection to `path` (made if missing) with every migration applied.
    `durable`: synchronous=FULL, every commit on disk before it returns (mail that was acknowledged);
    else NORMAL, which WAL keeps crash-safe. `secure_delete`: deleted content is overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=timeout, check_same_thread=check_same_thread)
    enable_wal(conn)
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    if secure_delete:
        conn.execute("PRAGMA secure_delete=ON")
    migrate(conn, migrations)
    return conn


def migrate(conn: sqlite3.Connection, migrations: Migrations) -> list[str]:
    """Apply the migrations this file lacks; their names."""
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied TEXT)")
    if _applied(conn) >= {name for name, _ in migrations}:
        return []
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = _applied(conn)            # again, under the lock: another process may have just applied them
        applied = []
        for name, step in migrations:
            if name in done:
                continue
            if callable(step):
                step(conn)
            else:
                for statement in filter(str.strip, step.split(";")):
                    conn.execute(statement)
            conn.execute("INSERT INTO _migrations (name, applied) VALUES (?, ?)", (name, utcnow()))
            applied.append(name)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return applied


def add_column(table: str, column: str, definition: str) -> Callable[[sqlite3.Connection], None]:
    """A step that adds a column, unless a file made before the migration was named has it already."""
    def step(conn: sqlite3.Connection) -> None:
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    return step


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


def _applied(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM _migrations")}
