"""Idempotency keys of HTTP sends: a request retried with the same `Idempotency-Key` within a day gets the
first answer, and nothing is queued twice (apps retry on timeouts, and would otherwise send twice).

A key is claimed before the message is queued, under the store's lock, so that two requests racing with
one key cannot both queue it; only a queued answer is kept. Anything else (a refusal, a failure) releases
the claim, so that the retry is decided afresh.
"""
from __future__ import annotations

import time

from policy.store import Store, utcnow

TTL = 86400.0
PENDING = "pending"


def _cutoff() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - TTL))


def claim(store: Store, tenant: str, key: str) -> tuple[int, str] | str | None:
    """None: claimed, go on; PENDING: the same key is being sent right now; else the first (status, body)."""
    with store.exclusive():
        row = store.one("SELECT status, body FROM idempotency WHERE tenant = ? AND key = ? AND created >= ?",
                        [tenant, key, _cutoff()])
        if row is not None:
            return PENDING if row["status"] is None else (row["status"], row["body"])
        store.execute("DELETE FROM idempotency WHERE tenant = ? AND key = ?", [tenant, key])     # a day old
        store.insert("idempotency", {"tenant": tenant, "key": key, "created": utcnow(), "status": None, "body": None})
    return None


def keep(store: Store, tenant: str, key: str, status: int, body: str) -> None:
    store.execute("UPDATE idempotency SET status = ?, body = ? WHERE tenant = ? AND key = ?", [status, body, tenant, key])


def release(store: Store, tenant: str, key: str) -> None:
    store.execute("DELETE FROM idempotency WHERE tenant = ? AND key = ? AND status IS NULL", [tenant, key])


def purge(store: Store) -> int:
    return store.execute("DELETE FROM idempotency WHERE created < ?", [_cutoff()]).rowcount
