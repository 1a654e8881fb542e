"""The events table: what happened to each copy (delivered, deferred, failed, expired) and to each tenant
(suspended), kept for `privacy.events_retention` so `queue show` can tell a message's story."""
from __future__ import annotations

from policy.store import Store, utcnow


def record(store: Store, kind: str, tenant: str, detail: str, queue_id: str | None = None,
           recipient: str | None = None) -> None:
    store.insert("events", {"time": utcnow(), "kind": kind, "tenant": tenant, "queue_id": queue_id,
                            "recipient": recipient, "detail": detail})


def of_message(store: Store, queue_id: str) -> list[dict]:
    """A message's events, oldest first."""
    return store.all("SELECT time, kind, recipient, detail FROM events WHERE queue_id = ? ORDER BY id", [queue_id])
