"""Mail the provider itself sends (acknowledgements of complaints and privacy requests).

The inbound role writes it here; the delivery role moves it into its durable spool within a second and
delivers it like any copy, signed with the provider's key and with a null envelope sender (RFC 3834
§3.3: nobody replies to an auto-reply). The store carries it because inbound/ and relay/ never import each
other (only the command line wires the roles together). A row is claimed for `LEASE` seconds and deleted once
spooled, so a delivery process that dies in between leaves it to another: at least once. A row's id is the queue
id the copy will carry, so whoever writes it can record it (terms notices: policy/terms.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from policy.queue_ids import new_queue_id
from policy.store import Store, utcnow

PROVIDER = "_provider"      # the spool's tenant for provider mail (tenant ids cannot start with "_")
LEASE = 300.0


@dataclass(frozen=True)
class Outgoing:
    queue_id: str
    recipient: str
    raw: bytes


def put(store: Store, node: str, recipient: str, raw: bytes) -> str:
    """Queue `raw` for `recipient`; returns its queue id."""
    queue_id = new_queue_id(node)
    store.insert("outbox", {"id": queue_id, "created": utcnow(), "recipient": recipient, "raw": raw, "claimed": None})
    return queue_id


def claim(store: Store, limit: int = 50) -> list[Outgoing]:
    """Rows nobody claimed in the last LEASE seconds, now claimed by the caller."""
    now = time.time()
    with store.exclusive():
        rows = store.all("SELECT id, recipient, raw FROM outbox WHERE claimed IS NULL OR claimed < ? "
                         "ORDER BY created LIMIT ?", [now - LEASE, limit])
        for row in rows:
            store.execute("UPDATE outbox SET claimed = ? WHERE id = ?", [now, row["id"]])
    return [Outgoing(r["id"], r["recipient"], bytes(r["raw"])) for r in rows]


def done(store: Store, queue_id: str) -> None:
    store.execute("DELETE FROM outbox WHERE id = ?", [queue_id])


def waiting(store: Store) -> bool:
    return store.one("SELECT 1 AS x FROM outbox LIMIT 1") is not None
