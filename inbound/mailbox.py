"""Durable storage of what the inbound listener receives, with what was concluded and done.

A message is acknowledged (250) only once it is here, fsync'ed: an unsubscribe, complaint or bounce
that was accepted is never lost, and one whose processing was cut short by a crash is processed on
restart. Raw messages are evidence: kept `inbound.retention`, then deleted (secure_delete).
Each row names the process working on it (`claimed_by`: the one that received it, or the one that
recovers it): after a crash the row is taken over once that process is gone, never while it lives, so
a message is not acted on twice by two workers of a starting node. A message whose processing fails
MAX_FAILURES times is set aside instead of being retried at every start (as Mailman's shunt queue does):
`websofttt inbound aside` lists such messages, `websofttt inbound retry ID` gives one its attempts back.
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from policy.store import utcnow
from policy.sqlite_files import Migrations, add_column, open_file

MAX_FAILURES = 3      # processing attempts after which a message is set aside, not retried at every start
MIGRATIONS: Migrations = [
    ("inbound", """
CREATE TABLE IF NOT EXISTS inbound (
    id TEXT PRIMARY KEY, received TEXT NOT NULL, peer TEXT, mail_from TEXT, recipients TEXT NOT NULL,
    raw BLOB, kind TEXT, evidence TEXT, action TEXT, processed INTEGER NOT NULL DEFAULT 0, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS inbound_pending ON inbound (processed);
CREATE INDEX IF NOT EXISTS inbound_expires ON inbound (expires)"""),
    ("claimed_by", add_column("inbound", "claimed_by", "INTEGER")),     # the process working on the row
    ("failures", add_column("inbound", "failures", "INTEGER NOT NULL DEFAULT 0")),
    ("error", add_column("inbound", "error", "TEXT")),                  # why the last attempt failed
]


@dataclass(frozen=True)
class Received:
    id: str
    mail_from: str
    recipients: tuple[str, ...]     # the accepted role addresses
    raw: bytes


class Mailbox:
    """One SQLite file per node, written by a single thread per process (fsync off the event loop)."""

    def __init__(self, path: Path, retention: float):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.retention = path, retention
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailbox")
        self._conn: sqlite3.Connection      # opened by _open, on the mailbox thread
        self._executor.submit(self._open).result()

    def _open(self) -> None:
        self._conn = open_file(self.path, MIGRATIONS, secure_delete=True)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def keep(self, peer: str, mail_from: str, recipients: list[str], raw: bytes) -> str:
        """Store durably and return the id; raises sqlite3.Error if the message could not be kept."""
        inbound_id = os.urandom(9).hex()
        await self._run(self._insert, inbound_id, peer, mail_from, recipients, raw)
        return inbound_id

    def _insert(self, inbound_id: str, peer: str, mail_from: str, recipients: list[str], raw: bytes) -> None:
        self._conn.execute("INSERT INTO inbound (id, received, peer, mail_from, recipients, raw, expires, claimed_by) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (inbound_id, utcnow(), peer, mail_from,
                                                               json.dumps(recipients), raw,
                                                               time.time() + self.retention, os.getpid()))

    async def conclude(self, inbound_id: str, kind: str, evidence: str, action: str) -> None:
        await self._run(self._conclude, inbound_id, kind, evidence, action)

    def _conclude(self, inbound_id: str, kind: str, evidence: str, action: str) -> None:
        self._conn.execute("UPDATE inbound SET kind = ?, evidence = ?, action = ?, processed = 1 WHERE id = ?",
                           (kind, evidence, action, inbound_id))

    async def failed(self, inbound_id: str, error: str) -> int:
        """Count a failed attempt at processing; how many there have been."""
        return await self._run(self._failed, inbound_id, error)

    def _failed(self, inbound_id: str, error: str) -> int:
        row = self._conn.execute("UPDATE inbound SET failures = failures + 1, error = ? WHERE id = ? RETURNING failures",
                                 (error[:500], inbound_id)).fetchone()
        return row[0] if row else 0

    async def pending(self) -> list[Received]:
        """Messages acknowledged but not processed (the process stopped in between)."""
        return await self._run(self._pending)

    def _pending(self) -> list[Received]:
        """Unprocessed rows whose process is gone, each claimed by this one (a claim another took is skipped);
        not those set aside after MAX_FAILURES attempts."""
        rows = self._conn.execute("SELECT id, mail_from, recipients, raw, claimed_by FROM inbound "
                                  "WHERE processed = 0 AND failures < ?", (MAX_FAILURES,)).fetchall()
        taken = []
        for inbound_id, mail_from, recipients, raw, owner in rows:
            if owner is not None and _alive(owner):
                continue
            claimed = self._conn.execute("UPDATE inbound SET claimed_by = ? WHERE id = ? AND processed = 0 AND "
                                         "claimed_by IS ?", (os.getpid(), inbound_id, owner)).rowcount
            if claimed:
                taken.append(Received(inbound_id, mail_from, tuple(json.loads(recipients)), raw))
        return taken

    async def expire(self) -> int:
        """Delete raw messages past their retention; the WAL is truncated so their bytes go too."""
        return await self._run(self._expire)

    def _expire(self) -> int:
        count = self._conn.execute("DELETE FROM inbound WHERE expires < ?", (time.time(),)).rowcount
        if count:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return count

    def close(self) -> None:
        self._executor.submit(self._conn.close).result()
        self._executor.shutdown()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # it exists, under another user
        return True
    return True


def set_aside(path: Path) -> list[dict]:
    """Messages whose processing failed MAX_FAILURES times and is no longer retried, oldest first."""
    if not path.exists():
        return []
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        rows = conn.execute("SELECT id, received, kind, failures, error FROM inbound WHERE processed = 0 AND "
                            "failures >= ? ORDER BY received", (MAX_FAILURES,)).fetchall()
    return [dict(zip(("id", "received", "kind", "failures", "error"), r)) for r in rows]


def retry(path: Path, inbound_id: str) -> bool:
    """Give a message set aside its attempts back: the next start processes it again."""
    if not path.exists():
        return False
    with closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as conn:
        return conn.execute("UPDATE inbound SET failures = 0, error = NULL WHERE id = ? AND processed = 0",
                            (inbound_id,)).rowcount == 1


def records_from(path: Path, address: str) -> list[dict]:
    """What this node received from one envelope sender, without the raw messages (subject access)."""
    if not path.exists():
        return []
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        rows = conn.execute("SELECT id, received, recipients, kind, action FROM inbound WHERE lower(mail_from) = ?",
                            (address,)).fetchall()
    return [dict(zip(("id", "received", "recipients", "kind", "action"), r)) for r in rows]


def erase_from(path: Path, address: str) -> int:
    """Delete what this node received from one envelope sender (processed or not: the request decides)."""
    if not path.exists():
        return 0
    with closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as conn:
        conn.execute("PRAGMA secure_delete=ON")
        count = conn.execute("DELETE FROM inbound WHERE lower(mail_from) = ?", (address,)).rowcount
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return count

