"""The events table: what happened to each copy (delivered, deferred, failed, expired) and to each tenant
(suspended), kept for `privacy.events_retention` so `queue show` can tell a message's story."""
from __future__ import annotations

import time

from policy.store import Store, utcnow

# What a tenant is told of (its API's /v1/events, its webhooks): the type it sees -> the kind stored here
TYPES = ("delivered", "deferred", "bounced", "expired", "suppressed", "complained", "unsubscribed")
KIND = {name: "failed" if name == "bounced" else name for name in TYPES}     # a bounce is a copy that failed
TYPE = {kind: name for name, kind in KIND.items()}
SETTLE = 2.0        # seconds before an event is told: on PostgreSQL a lower id may commit after a higher one


def record(store: Store, kind: str, tenant: str, detail: str, queue_id: str | None = None,
           recipient: str | None = None, campaign: str | None = None) -> None:
    store.insert("events", {"time": utcnow(), "kind": kind, "tenant": tenant, "queue_id": queue_id,
                            "recipient": recipient, "detail": detail, "campaign": campaign})


def of_message(store: Store, queue_id: str) -> list[dict]:
    """A message's events, oldest first."""
    return store.all("SELECT time, kind, recipient, detail FROM events WHERE queue_id = ? ORDER BY id", [queue_id])


def told_after(store: Store, tenant: str, after: int, types: list[str], limit: int) -> list[dict]:
    """The tenant's events of `types` after id `after`, in order, at least SETTLE seconds old, so that a cursor
    kept by the reader never passes over a row another node was still committing."""
    settled = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - SETTLE))
    kinds = [KIND[t] for t in types]
    return store.all(f"SELECT id, time, kind, tenant, queue_id, recipient, detail, campaign FROM events WHERE tenant = ? "
                     f"AND id > ? AND kind IN ({', '.join('?' * len(kinds))}) AND time <= ? ORDER BY id LIMIT ?",
                     [tenant, after, *kinds, settled, limit])
