"""Durable spool: accepted messages and per-recipient state, one SQLite file per worker (shard).

The submission server answers 250 only after the message is on disk: `enqueue` hands the
message to a writer thread that commits everything that arrived while the previous commit was
running in one transaction (group commit), with `synchronous=FULL`, so one fsync covers many
concurrent sessions; if that transaction fails, each of its writes is tried on its own, so one bad
write fails alone. A record nobody waits for (a copy's final outcome) waits up to LATER for the next
write, usually an enqueue, and shares its fsync. Bodies are deleted with `secure_delete` so their
bytes do not linger.

The spool is the record, not the way fresh mail reaches delivery: a worker that also delivers gets each
accepted message handed over in memory right after the fsync (`Handoff`), and its recipients' rows are
*leased* (`next_attempt` = now + LEASE) so that the loop's periodic `due` scan leaves them alone. The
spool is read back after a restart (a new loop sees the leases of the previous one at once), for a
retry, for a shard adopted from another worker, for mail that found the hand-off full, and by a
delivery process of its own (`serve --only`), to which nothing is handed over.
"""
from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from policy.store import utcnow
from policy.sqlite_files import Migrations, add_column, open_file

MIGRATIONS: Migrations = [("spool", """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, mail_from TEXT NOT NULL, size INTEGER NOT NULL,
    received TEXT NOT NULL, smtputf8 INTEGER NOT NULL DEFAULT 0, campaign TEXT, from_domain TEXT, data BLOB,
    eightbit INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS recipients (
    queue_id TEXT NOT NULL REFERENCES messages(id), recipient TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL, last_reply TEXT, updated TEXT, token TEXT,
    PRIMARY KEY (queue_id, recipient));
CREATE INDEX IF NOT EXISTS recipients_due ON recipients (state, next_attempt)"""),
              ("eightbit", add_column("messages", "eightbit", "INTEGER NOT NULL DEFAULT 0"))]


class SpoolError(Exception):
    """The message could not be made durable; `disk_full` tells the client to try later (452)."""

    def __init__(self, message: str, disk_full: bool = False):
        super().__init__(message)
        self.disk_full = disk_full


@dataclass(frozen=True)
class Message:
    id: str
    tenant: str
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes
    smtputf8: bool = False
    campaign: str | None = None
    from_domain: str = ""
    eightbit: bool = False      # submitted with BODY=8BITMIME (RFC 6152); 8-bit bytes without it count on the way out


def connect(path: Path) -> sqlite3.Connection:
    """A shard, durable (fsync'ed before a 250) and erased bodies overwritten."""
    return open_file(path, MIGRATIONS, secure_delete=True, check_same_thread=False)


def shard_path(spool_dir: Path, shard: int) -> Path:
    return spool_dir / f"shard-{shard}.sqlite"


def shard_paths(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("shard-*.sqlite"))


class State(StrEnum):
    """A recipient's state in the spool; the values are what the spool files and `queue show` hold."""
    QUEUED = "queued"              # not tried yet
    DEFERRED = "deferred"          # tried, or held, and to be tried again at next_attempt
    DELIVERED = "delivered"
    FAILED = "failed"              # a permanent refusal: bounced
    EXPIRED = "expired"            # still refused after delivery.max_queue_lifetime: bounced
    SUPPRESSED = "suppressed"      # on the suppression list by the time its turn came
    DROPPED = "dropped"            # `queue drop`


PENDING = f"state IN ('{State.QUEUED}', '{State.DEFERRED}')"      # recipients still to be tried
FINAL = (State.DELIVERED, State.FAILED, State.EXPIRED, State.SUPPRESSED, State.DROPPED)
LEASE = 10.0        # seconds the scan leaves the rows of mail handed over in memory to the delivery loop
LATER = 0.05        # seconds a record nobody waits for may wait for company (the next enqueue's transaction)


@dataclass(frozen=True)
class Due:
    """A recipient whose next attempt is due, with what delivery needs of its message."""
    queue_id: str
    recipient: str
    attempts: int
    token: str | None
    tenant: str
    mail_from: str
    received: str
    campaign: str | None
    from_domain: str | None
    eightbit: bool = False


@dataclass(frozen=True)
class Queued:
    """A message just committed: what `due` would read back for each of its recipients, and its body."""
    message: Message
    received: str
    leased: bool        # its rows are leased to the hand-off (reserved before the commit)

    def due(self, recipient: str, token: str | None = None) -> Due:
        m = self.message
        return Due(m.id, recipient, 0, token, m.tenant, m.mail_from, self.received, m.campaign, m.from_domain,
                   m.eightbit)


class Handoff(Protocol):
    """The delivery loop of this process, taking fresh mail in memory (relay/fresh.py)."""

    def reserve(self, message: Message) -> bool:
        """Room for `message`? Then its rows are written leased. Once the commit is known, `take` follows if it
        succeeded (reserved or not), `release` if it failed and was reserved."""

    def take(self, queued: Queued) -> None:
        """`queued` is durable: deliver it from memory (leased) or find it in the spool (not leased)."""

    def release(self, message: Message) -> None:
        """A reserved message was not committed."""


Op = Callable[[sqlite3.Connection], object]     # what it returns is not used


class Spool:
    """One shard, owned by one worker process and used from one event loop; every write goes through one
    group-committing writer thread."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._writer = connect(path)
        self._reader = connect(path)
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._later: list[tuple[Op, asyncio.AbstractEventLoop, asyncio.Future]] = []   # ride with the next write
        self._later_timer: asyncio.TimerHandle | None = None
        self._thread = threading.Thread(target=self._write_loop, name=f"spool-{path.stem}", daemon=True)
        self._thread.start()

    async def enqueue(self, message: Message, handoff: Handoff | None = None) -> None:
        """Return once `message` and its recipients are committed and fsync'ed; raise SpoolError if not.

        With `handoff`, the message goes to it as soon as the commit is known, before this returns and even
        if the caller is cancelled meanwhile (the client left: the message is durable all the same)."""
        received = utcnow()
        leased = handoff is not None and handoff.reserve(message)
        due_at = time.time() + (LEASE if leased else 0.0)

        def insert(conn: sqlite3.Connection) -> None:
            m = message
            conn.execute("INSERT INTO messages (id, tenant, mail_from, size, received, smtputf8, campaign, from_domain, "
                         "data, eightbit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (m.id, m.tenant, m.mail_from, len(m.data), received, int(m.smtputf8), m.campaign,
                          m.from_domain, m.data, int(m.eightbit)))
            conn.executemany("INSERT INTO recipients (queue_id, recipient, next_attempt, updated) VALUES (?, ?, ?, ?)",
                             [(m.id, r, due_at, received) for r in m.recipients])
        done = self._submit(insert)
        if handoff is None:
            return await done

        def handed(f: asyncio.Future) -> None:
            if f.exception() is None:
                handoff.take(Queued(message, received, leased))
            elif leased:
                handoff.release(message)
        done.add_done_callback(handed)
        await asyncio.shield(done)

    def record(self, queue_id: str, recipient: str, state: State, attempts: int, next_attempt: float,
               reply: str, token: str | None, wait: bool = True) -> asyncio.Future:
        """Durably record an attempt; once no recipient is left to try, the body is erased (secure_delete).

        Returns a future settled once the record is committed. `wait=False`: nobody waits for it (delivery
        keeps the recipient claimed until then), so it is committed in the transaction of the next write,
        an enqueue that its client waits for anyway, or after LATER seconds at most."""
        def update(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE recipients SET state = ?, attempts = ?, next_attempt = ?, last_reply = ?, "
                         "updated = ?, token = ? WHERE queue_id = ? AND recipient = ?",
                         (state, attempts, next_attempt, reply, utcnow(), token, queue_id, recipient))
            if state in FINAL:
                erase_finished(conn, queue_id)
        return self._submit(update) if wait else self._submit_later(update)

    def wake(self, reply_prefix: str) -> asyncio.Future:
        """Recipients held with a reply that starts with `reply_prefix` (a suspended site's) are due now."""
        def update(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE recipients SET next_attempt = 0 WHERE state = 'deferred' AND "
                         "substr(last_reply, 1, ?) = ?", (len(reply_prefix), reply_prefix))
        return self._submit(update)

    def due(self, now: float, limit: int, leased_before: float = 0.0) -> list[Due]:
        """Recipients to try, oldest first; never-tried ones leased before `leased_before` too (the leases of a
        loop that ran before this one: nothing of theirs is in memory any more)."""
        when, params = "r.next_attempt <= ?", [now]
        if leased_before > now:
            when = "(r.next_attempt <= ? OR (r.state = 'queued' AND r.next_attempt <= ?))"
            params.append(leased_before)
        rows: list[tuple[str, str, int, str | None, str, str, str, str | None, str | None, int]] = self._reader.execute(
            "SELECT r.queue_id, r.recipient, r.attempts, r.token, m.tenant, m.mail_from, m.received, m.campaign, "
            "m.from_domain, m.eightbit "
            "FROM recipients r JOIN messages m ON m.id = r.queue_id "
            "WHERE r." + PENDING + " AND " + when + " ORDER BY r.next_attempt LIMIT ?", (*params, limit)).fetchall()
        return [Due(*row[:-1], bool(row[-1])) for row in rows]

    def next_due(self) -> float | None:
        return self._reader.execute("SELECT min(next_attempt) FROM recipients WHERE " + PENDING).fetchone()[0]

    def body(self, queue_id: str) -> bytes | None:
        row = self._reader.execute("SELECT data FROM messages WHERE id = ?", (queue_id,)).fetchone()
        return row[0] if row else None

    async def purge_finished(self, before: str) -> int:
        """Delete messages finished before `before` (ISO time) with their recipient rows; returns how many."""
        count = 0

        def purge(conn: sqlite3.Connection) -> None:
            nonlocal count
            done = [r[0] for r in conn.execute(
                "SELECT id FROM messages m WHERE data IS NULL AND received < ? AND NOT EXISTS "
                "(SELECT 1 FROM recipients r WHERE r.queue_id = m.id AND r." + PENDING + ")", (before,))]
            for queue_id in done:
                conn.execute("DELETE FROM recipients WHERE queue_id = ?", (queue_id,))
                conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,))
            count = len(done)
        await self._submit(purge)
        return count

    def checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it, so erased bodies leave no copy in the WAL."""
        self._writer_call(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))

    def close(self) -> None:
        self._flush_later()
        self._pending.put(None)
        self._thread.join()
        self._writer.close()
        self._reader.close()

    def _submit(self, op: Op) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._flush_later()           # the records waiting for company go first: the writer takes them together
        self._pending.put((op, loop, done))
        return done

    def _submit_later(self, op: Op) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._later.append((op, loop, done))
        if self._later_timer is None:
            self._later_timer = loop.call_later(LATER, self._flush_later)
        return done

    def _flush_later(self) -> None:
        if self._later_timer is not None:
            self._later_timer.cancel()
        for item in self._later:
            self._pending.put(item)
        self._later, self._later_timer = [], None

    def _writer_call(self, op: Op) -> None:
        """Run `op` on the writer connection outside a transaction (from any thread, waiting for it)."""
        finished = threading.Event()
        self._pending.put((op, None, finished))
        finished.wait()

    def _write_loop(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._pending.put(None)
                    break
                batch.append(item)
            plain = [(op, done) for op, loop, done in batch if loop is None]
            grouped = [item for item in batch if item[1] is not None]
            error, begun = self._commit([op for op, _, _ in grouped]) if grouped else (None, False)
            if error is not None and begun and len(grouped) > 1:     # one bad write must not fail the others
                outcomes = [(item, self._commit([item[0]])[0]) for item in grouped]
            else:                     # all committed, or no transaction could begin: none can alone either
                outcomes = [(item, error) for item in grouped]
            waiting: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, SpoolError | None]]] = {}
            for (_, loop, done), outcome in outcomes:
                waiting.setdefault(loop, []).append((done, outcome))
            for loop, settled in waiting.items():       # one wake-up of each loop per commit, not one per write
                loop.call_soon_threadsafe(_settle, settled)
            for op, finished in plain:
                op(self._writer)
                finished.set()

    def _commit(self, ops: list[Op]) -> tuple[SpoolError | None, bool]:
        """(the error, if any; whether the transaction began)."""
        begun = False
        try:
            # IMMEDIATE: the write lock first. A deferred transaction that reads before it writes (purge) fails
            # at once with "database is locked" when another process (`serve --only`) wrote in between.
            self._writer.execute("BEGIN IMMEDIATE")
            begun = True
            for op in ops:
                op(self._writer)
            self._writer.execute("COMMIT")
            return None, True
        except sqlite3.Error as e:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
            full = isinstance(e, sqlite3.OperationalError) and "full" in str(e).lower()
            return SpoolError(str(e), disk_full=full), begun


def erase_finished(conn: sqlite3.Connection, queue_id: str) -> None:
    """Drop the body of a message none of whose recipients is still to be tried."""
    conn.execute("UPDATE messages SET data = NULL WHERE id = ? AND data IS NOT NULL AND NOT EXISTS "
                 "(SELECT 1 FROM recipients WHERE queue_id = ? AND " + PENDING + ")",
                 (queue_id, queue_id))


def _settle(settled: list[tuple[asyncio.Future, SpoolError | None]]) -> None:
    for done, error in settled:
        if done.cancelled():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
