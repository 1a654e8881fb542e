"""Sent copies: what each token stands for, kept `sent_retention` so late replies still map back."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, UTC

from policy.store import Store, utcnow


@dataclass(frozen=True)
class SentCopy:
    token: str
    tenant: str
    recipient: str
    message_id: str | None
    queue_id: str
    created: str
    expires: str


def record(store: Store, token: str, tenant: str, recipient: str, message_id: str | None, queue_id: str,
           retention: float) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=retention)).strftime("%Y-%m-%dT%H:%M:%SZ")
    store.execute("INSERT INTO sent (token, tenant, recipient, message_id, queue_id, created, expires) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?)", [token, tenant, recipient.lower(), message_id, queue_id, utcnow(), expires])


def lookup(store: Store, token: str) -> SentCopy | None:
    row = store.one("SELECT * FROM sent WHERE token = ? AND expires > ?", [token.lower(), utcnow()])
    return SentCopy(**row) if row else None


def by_message_ids(store: Store, message_ids: list[str] | tuple[str, ...]) -> list[SentCopy]:
    """Copies of the messages a reply refers to (In-Reply-To, References)."""
    if not message_ids:
        return []
    marks = ", ".join("?" * len(message_ids))
    rows = store.all(f"SELECT * FROM sent WHERE message_id IN ({marks}) AND expires > ?", [*message_ids, utcnow()])
    return [SentCopy(**r) for r in rows]


def tenants_that_mailed(store: Store, recipient: str) -> list[str]:
    """Tenants with a copy to `recipient` still within the retention window."""
    rows = store.all("SELECT DISTINCT tenant FROM sent WHERE recipient = ? AND expires > ? ORDER BY tenant",
                     [recipient.lower(), utcnow()])
    return [r["tenant"] for r in rows]


def latest_to(store: Store, recipient: str) -> SentCopy | None:
    """The most recent copy to `recipient` within retention: the likeliest subject of a token-less bounce."""
    row = store.one("SELECT * FROM sent WHERE recipient = ? AND expires > ? ORDER BY created DESC LIMIT 1",
                    [recipient.lower(), utcnow()])
    return SentCopy(**row) if row else None
