"""The queue as the command line sees it: every shard file of a node (`shards`), read and changed while its workers run.

`queue list|show|retry|drop`, `privacy export|erase` and the /metrics queue gauges go through here. Each
call opens the shard files itself (SQLite WAL lets it beside the worker that owns a shard) and closes
them; a worker's live spool is relay/spool.py.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from policy.store import utcnow
from relay.spool import PENDING, State, connect, erase_finished, shard_paths


def shards(spool_dir: Path, read_only: bool = False) -> Iterator[sqlite3.Connection]:
    """Each shard file of the node, opened in turn (read-only: never created, migrated or written) and
    closed when the loop moves on or ends."""
    for path in shard_paths(spool_dir):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) if read_only else connect(path)
        try:
            yield conn
        finally:
            conn.close()


def queue_summary(spool_dir: Path) -> list[dict]:
    """Every message in the node's shards: id, tenant, received, size and recipient counts by state (no addresses).

    In the order they were queued, over all shards: by received time (to the second), then by id. Not by id
    alone: ids made before they were base32hex do not sort like their times, and a spool keeps them until
    their messages are done."""
    rows: list[dict] = []
    for conn in shards(spool_dir):
        for mid, tenant, received, size in conn.execute("SELECT id, tenant, received, size FROM messages"):
            states = dict(conn.execute(
                "SELECT state, count(*) FROM recipients WHERE queue_id = ? GROUP BY state", [mid]).fetchall())
            rows.append({"id": mid, "tenant": tenant, "received": received, "size": size,
                         "recipients": sum(states.values()), "states": states})
    return sorted(rows, key=lambda row: (row["received"], row["id"]))


def pending_stats(spool_dir: Path) -> tuple[int, str | None]:
    """(recipients waiting, received time of the oldest message with one) over the node's shards, read-only."""
    count, oldest = 0, None
    for conn in shards(spool_dir, read_only=True):
        n, first = conn.execute(f"SELECT count(*), min(m.received) FROM recipients r JOIN messages m "
                                f"ON m.id = r.queue_id WHERE r.{PENDING}").fetchone()
        count += n
        oldest = min(filter(None, (oldest, first)), default=None)
    return count, oldest


def message_detail(spool_dir: Path, queue_id: str) -> dict | None:
    """One message with its envelope and per-recipient state (individual records: callers audit first)."""
    for conn in shards(spool_dir):
        row = conn.execute("SELECT id, tenant, mail_from, received, size FROM messages WHERE id = ?",
                           [queue_id]).fetchone()
        if row:
            rcpts = conn.execute(
                "SELECT recipient, state, attempts, last_reply, updated FROM recipients WHERE queue_id = ? "
                "ORDER BY recipient", [queue_id]).fetchall()
            keys = ("recipient", "state", "attempts", "last_reply", "updated")
            return dict(zip(("id", "tenant", "mail_from", "received", "size"), row),
                        recipients=[dict(zip(keys, r)) for r in rcpts])
    return None


def retry_now(spool_dir: Path, queue_id: str | None) -> int:
    """Make deferred recipients (of one message, or all) due now; returns how many."""
    count = 0
    for conn in shards(spool_dir):
        sql = f"UPDATE recipients SET next_attempt = 0 WHERE state = '{State.DEFERRED}'"
        count += conn.execute(sql + (" AND queue_id = ?" if queue_id else ""),
                              (queue_id,) if queue_id else ()).rowcount
    return count


def _drop_pending(conn: sqlite3.Connection, queue_id: str) -> int:
    count = conn.execute(f"UPDATE recipients SET state = '{State.DROPPED}', updated = ? WHERE queue_id = ? AND "
                         + PENDING, (utcnow(), queue_id)).rowcount
    erase_finished(conn, queue_id)
    return count


def drop(spool_dir: Path, queue_id: str) -> int:
    """Stop delivering a message: its pending recipients become 'dropped' and its body is erased."""
    for conn in shards(spool_dir):
        conn.execute("BEGIN IMMEDIATE")
        count = _drop_pending(conn, queue_id)
        found = conn.execute("SELECT 1 FROM messages WHERE id = ?", (queue_id,)).fetchone()
        conn.execute("COMMIT")
        if found:
            return count
    return -1


def drop_tenant(spool_dir: Path, tenant: str, erase: bool) -> int:
    """Stop delivering a removed tenant's mail on this node: its pending recipients dropped and bodies erased;
    with `erase`, its messages and their recipients' rows deleted outright. Returns the recipients dropped."""
    count = 0
    for conn in shards(spool_dir):
        conn.execute("BEGIN IMMEDIATE")
        ids = [r[0] for r in conn.execute("SELECT id FROM messages WHERE tenant = ?", (tenant,))]
        count += sum(_drop_pending(conn, queue_id) for queue_id in ids)
        if erase:
            conn.execute("DELETE FROM recipients WHERE queue_id IN (SELECT id FROM messages WHERE tenant = ?)", (tenant,))
            conn.execute("DELETE FROM messages WHERE tenant = ?", (tenant,))
        conn.execute("COMMIT")
    return count


def address_records(spool_dir: Path, address: str) -> list[dict]:
    """This node's queue entries for one recipient address (subject access)."""
    rows: list[dict] = []
    for conn in shards(spool_dir):
        rows += [dict(zip(("queue_id", "state", "attempts", "last_reply", "updated"), r)) for r in conn.execute(
            "SELECT queue_id, state, attempts, last_reply, updated FROM recipients WHERE lower(recipient) = ?",
            (address,))]
    return rows


def erase_address(spool_dir: Path, address: str) -> int:
    """Forget one recipient address: its rows go (pending ones are not delivered), then bodies left without a
    pending recipient; returns the rows removed."""
    count = 0
    for conn in shards(spool_dir):
        conn.execute("BEGIN IMMEDIATE")
        ids = [r[0] for r in conn.execute("SELECT queue_id FROM recipients WHERE lower(recipient) = ?", (address,))]
        count += conn.execute("DELETE FROM recipients WHERE lower(recipient) = ?", (address,)).rowcount
        for queue_id in ids:
            erase_finished(conn, queue_id)
        conn.execute("COMMIT")
    return count

