"""Retention: what the store keeps about people, and for how long (the privacy policy's "store the minimum").

Run periodically by the delivery role (relay/serve). Bodies go at once after final delivery (the spool),
raw inbound messages after `inbound.retention` (the inbound role); here:
- sent copies (token → tenant, recipient, message) after `delivery.sent_retention` (180 days);
- events, bounce records and hourly counts after `privacy.events_retention` (400 days);
- the answers kept for HTTP sends' idempotency keys after a day (policy/idempotency.py).
Suppressions stay (they are the opt-out itself); complaints and cases stay for the abuse desk, their
addresses removed on request by `privacy erase`. Rows a standing legal hold covers (policy/holds.py) stay
too, and each purge that kept some says so in the audit log.
"""
from __future__ import annotations

import time
from collections import Counter

from policy import audit, holds, idempotency
from policy.settings import Settings
from policy.store import Store, utcnow

# table -> (its rows past retention, as SQL; its recipient column, if it has one); every table has `tenant`
_PAST = {
    "sent": ("expires < :now", "recipient"),
    "events": ("time < :cutoff", "recipient"),
    "bounces": ("time < :cutoff", "recipient"),
    "activity": ("hour < :hour", None),
}


def purge(store: Store, settings: Settings) -> dict[str, int]:
    """Delete what is past its retention and not held; returns rows deleted per table, and rows "held".

    Exclusive, so that a hold placed or released meanwhile is either wholly in effect or not at all."""
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - settings.privacy.events_retention))
    params = {"now": utcnow(), "cutoff": cutoff, "hour": cutoff[:13]}
    counts: dict[str, int] = {}
    kept: Counter[int] = Counter()          # hold id -> rows it kept
    with store.exclusive():
        held = holds.standing(store)
        for table, (past, recipient) in _PAST.items():
            hold = _first_hold(held, table, recipient)
            if held:
                kept.update({r["hold"]: r["n"] for r in store.all(
                    f"SELECT hold, count(*) AS n FROM (SELECT {hold} AS hold FROM {table} WHERE {past}) AS k "
                    "WHERE hold IS NOT NULL GROUP BY hold", params)})
            counts[table] = store.execute(f"DELETE FROM {table} WHERE {past} AND {hold} IS NULL", params).rowcount
        counts["held"] = kept.total()
        counts["idempotency"] = idempotency.purge(store)
        if kept:
            audit.record(store, "retention purge",
                         f"kept {kept.total()} rows under holds {', '.join(map(str, sorted(kept)))}", "legal hold")
    return counts


def _first_hold(held: list[holds.Hold], table: str, recipient: str | None) -> str:
    """SQL: the id of the first of the `held` holds that covers a row of `table`, NULL if none does. Each row
    counts once, under that hold. The ids are integers from the store: written into the SQL as they are."""
    if not held:
        return "NULL"
    covers = f"holds.tenant = {table}.tenant" + (f" OR holds.address = {table}.{recipient}" if recipient else "")
    ids = ", ".join(str(h.id) for h in held)
    return f"(SELECT min(holds.id) FROM holds WHERE holds.id IN ({ids}) AND ({covers}))"
