"""The shared store: tenants, credentials, suppressions, counters, events, audit, secrets, complaints, cases.

SQLite through sqlite-utils in WAL mode, one file in the data dir, shared by every worker
process of the node. Only modules in policy/ touch it, so a PostgreSQL backend can replace it.
Schema changes are named migrations, applied once each and recorded in `_migrations`.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils


def utcnow() -> str:
    """Timestamps are ISO 8601 UTC strings: sortable, readable in `--json`, unambiguous across nodes."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def _initial_schema(db: sqlite_utils.Database) -> None:
    db["tenants"].create({
        "id": str, "status": str, "reason": str, "terms_version": str, "allowed_from": str,
        "networks": str, "rate": str, "created": str,
    }, pk="id", not_null={"status", "created"}, defaults={"status": "active", "allowed_from": "[]", "networks": "[]"})
    db["credentials"].create({
        "username": str, "tenant": str, "hash": str, "created": str, "last_used": str,
    }, pk="username", not_null={"tenant", "hash", "created"}, foreign_keys=[("tenant", "tenants", "id")])
    db["credentials"].create_index(["tenant"])
    db["suppressions"].create({
        "scope": str, "address": str, "cause": str, "source": str, "created": str, "expires": str,
    }, pk=("address", "scope"), not_null={"cause", "created"})
    db["counters"].create({"key": str, "started": float, "count": int}, pk="key")
    db["events"].create({
        "id": int, "time": str, "kind": str, "tenant": str, "queue_id": str, "recipient": str, "detail": str,
    }, pk="id")
    db["events"].create_index(["queue_id"])
    db["audit"].create({
        "id": int, "time": str, "os_user": str, "command": str, "shown": str, "reason": str,
    }, pk="id")
    db["secrets"].create({"name": str, "value": str, "created": str}, pk="name")


def _sent_copies(db: sqlite_utils.Database) -> None:
    db["sent"].create({
        "token": str, "tenant": str, "recipient": str, "message_id": str, "queue_id": str, "created": str,
        "expires": str,
    }, pk="token", not_null={"tenant", "recipient", "queue_id", "created", "expires"})
    db["sent"].create_index(["expires"])
    db["sent"].create_index(["message_id"])


def _tenant_dkim_keys(db: sqlite_utils.Database) -> None:
    db["dkim_keys"].create({
        "domain": str, "tenant": str, "selector": str, "private_pem": str, "created": str,
    }, pk="domain", not_null={"tenant", "selector", "private_pem", "created"},
        foreign_keys=[("tenant", "tenants", "id")])


def _tenant_names(db: sqlite_utils.Database) -> None:
    db["tenants"].add_column("name", str)


def _sent_by_recipient(db: sqlite_utils.Database) -> None:
    db["sent"].create_index(["recipient"])


def _bounce_events(db: sqlite_utils.Database) -> None:
    db["bounces"].create({
        "id": int, "time": str, "tenant": str, "recipient": str, "status": str, "class": str, "source": str,
    }, pk="id", not_null={"time", "tenant", "recipient", "class"})
    db["bounces"].create_index(["tenant", "time"])


def _abuse_desk(db: sqlite_utils.Database) -> None:
    db["complaints"].create({
        "id": int, "received": str, "tenant": str, "recipient": str, "feedback_type": str, "identified_by": str,
        "counted": int, "token": str, "source": str, "case_id": str, "user_agent": str, "source_ip": str,
        "reported_domain": str, "arrival_date": str,
    }, pk="id", not_null={"received", "tenant", "feedback_type", "identified_by", "counted"})
    db["complaints"].create_index(["tenant", "received"])
    db["complaints"].create_index(["token"], unique=True)       # one complaint per copy, however often reported
    db["cases"].create({
        "id": str, "kind": str, "opened": str, "complainant": str, "subject": str, "evidence": str,
        "tenant": str, "recipient": str, "status": str, "inbound_id": str, "acknowledged": int,
    }, pk="id", not_null={"kind", "opened", "status"})
    db["cases"].create_index(["opened"])
    db["cases"].create_index(["inbound_id"])
    db["outbox"].create({"id": str, "created": str, "recipient": str, "raw": bytes, "claimed": float},
                        pk="id", not_null={"created", "recipient", "raw"})
    db["activity"].create({"tenant": str, "hour": str, "delivered": int, "failed": int},
                          pk=("tenant", "hour"), defaults={"delivered": 0, "failed": 0})
    db["tenants"].add_column("resumed", str)


def _received_counts(db: sqlite_utils.Database) -> None:
    db["activity"].add_column("received", int, not_null_default=0)


def _provider_key_rotation(db: sqlite_utils.Database) -> None:
    db["provider_dkim_keys"].create({"selector": str, "private_pem": str, "created": str, "active_from": str},
                                    pk="selector", not_null={"private_pem", "created", "active_from"})


# Named migrations, applied in order; never edit one that has shipped, add a new one.
MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("0001_initial_schema", _initial_schema),
    ("0002_sent_copies", _sent_copies),
    ("0003_tenant_dkim_keys", _tenant_dkim_keys),
    ("0004_tenant_names", _tenant_names),
    ("0005_sent_by_recipient", _sent_by_recipient),
    ("0006_bounce_events", _bounce_events),
    ("0007_abuse_desk", _abuse_desk),
    ("0008_received_counts", _received_counts),
    ("0009_provider_key_rotation", _provider_key_rotation),
]


class Store:
    """One connection per process (sqlite3 connections must not cross a fork or a thread)."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 10000, other_thread: bool = False,
                 durable: bool = False):
        """`other_thread`: the connection will be used by one thread other than the one opening it.
        `durable`: every commit of this connection is fsync'ed (synchronous=FULL), for writers that mark
        their input done elsewhere right after (the inbound listener), so power loss cannot drop one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000,
                               check_same_thread=not other_thread)
        self.db = sqlite_utils.Database(conn)
        self.path = path
        enable_wal(conn)
        # NORMAL is crash-safe in WAL mode (a power loss may lose the last commits, never corrupt);
        # the spool, which holds acknowledged mail, uses FULL.
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.db.execute("PRAGMA foreign_keys=ON")

    def migrate(self) -> list[str]:
        """Apply pending migrations under an exclusive lock, so workers starting together do not race."""
        applied: list[str] = []
        with self.exclusive():
            self.db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied TEXT)")
            done = {r[0] for r in self.db.execute("SELECT name FROM _migrations").fetchall()}
            for name, step in MIGRATIONS:
                if name not in done:
                    step(self.db)
                    self.db.execute("INSERT INTO _migrations VALUES (?, ?)", [name, utcnow()])
                    applied.append(name)
        return applied

    def exclusive(self) -> "_Transaction":
        """A write transaction taken up front (BEGIN IMMEDIATE): read-modify-write without races."""
        return _Transaction(self.db.conn)

    def execute(self, sql: str, params: tuple | list | dict = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, params)

    def one(self, sql: str, params: tuple | list | dict = ()) -> dict | None:
        cur = self.db.execute(sql, params)
        row = cur.fetchone()
        return dict(zip([c[0] for c in cur.description], row)) if row else None

    def all(self, sql: str, params: tuple | list | dict = ()) -> list[dict]:
        cur = self.db.execute(sql, params)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def close(self) -> None:
        self.db.conn.close()

    # -- counters: one atomic upsert per hit, shared by all workers (and nodes, on PostgreSQL)

    def hit(self, key: str, window: float, now: float | None = None) -> int:
        """Count one event for `key` in a window that starts at its first event; return the count."""
        now = time.time() if now is None else now
        row = self.db.execute(
            "INSERT INTO counters (key, started, count) VALUES (?, ?, 1) "
            "ON CONFLICT(key) DO UPDATE SET "
            "count = CASE WHEN ? - started >= ? THEN 1 ELSE count + 1 END, "
            "started = CASE WHEN ? - started >= ? THEN excluded.started ELSE started END "
            "RETURNING count", [key, now, now, window, now, window]).fetchone()
        return row[0]

    def count(self, key: str, window: float, now: float | None = None) -> int:
        """Events for `key` in its current window (0 once the window has passed)."""
        now = time.time() if now is None else now
        row = self.db.execute("SELECT count FROM counters WHERE key = ? AND ? - started < ?",
                              [key, now, window]).fetchone()
        return row[0] if row else 0

    def reset(self, key: str) -> None:
        self.db.execute("DELETE FROM counters WHERE key = ?", [key])


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
