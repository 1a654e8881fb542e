"""Subject access and erasure for one address, over the shared store.

`export` returns every record the store holds about an address; `erase` removes them, except the
suppressions: they are the opt-out itself and must persist to keep honouring it. Complaint and bounce
records lose the address but stay as counts, so a tenant's rates (and a suspension they caused) do not
change when a recipient asks to be forgotten. The node-local records (spool, inbound mailbox) are
handled next to this by the command (relay/cli/privacy.py).
"""
from __future__ import annotations

from policy.addresses import normalise
from policy.store import Store

ERASED = "(erased)"

# table -> (columns shown, WHERE clause naming the address as :a)
_RECORDS = {
    "suppressions": ("address, scope, cause, source, created, expires", "address = :a"),
    "sent": ("tenant, recipient, message_id, queue_id, created, expires", "recipient = :a"),
    "complaints": ("received, tenant, recipient, feedback_type, identified_by, case_id, source", "recipient = :a"),
    "cases": ("id, kind, opened, complainant, subject, tenant, recipient, status", "complainant = :a OR recipient = :a"),
    "bounces": ("time, tenant, recipient, status, class, source", "recipient = :a"),
    "events": ("time, kind, tenant, queue_id, recipient, detail", "recipient = :a"),
    "counters": ("key, started, count", "substr(key, length(key) - length(:a)) = ':' || :a"),   # ack:, soft:T:
}


def export(store: Store, address: str) -> dict[str, list[dict]]:
    a = normalise(address)
    return {table: store.all(f"SELECT {columns} FROM {table} WHERE {where}", {"a": a})
            for table, (columns, where) in _RECORDS.items()}


def erase(store: Store, address: str) -> dict[str, int]:
    """Remove or anonymise every record about `address` but its suppressions; returns rows changed per table."""
    a = {"a": normalise(address), "erased": ERASED}
    with store.exclusive():
        return {
            "sent": store.execute("DELETE FROM sent WHERE recipient = :a", a).rowcount,
            "complaints": store.execute("UPDATE complaints SET recipient = NULL WHERE recipient = :a", a).rowcount,
            "cases": store.execute(
                "UPDATE cases SET complainant = CASE WHEN complainant = :a THEN :erased ELSE complainant END, "
                "recipient = CASE WHEN recipient = :a THEN NULL ELSE recipient END, subject = NULL, "
                "evidence = :erased WHERE complainant = :a OR recipient = :a", a).rowcount,
            "bounces": store.execute("UPDATE bounces SET recipient = :erased WHERE recipient = :a", a).rowcount,
            "events": store.execute("UPDATE events SET recipient = NULL WHERE recipient = :a", a).rowcount,
            "counters": store.execute(f"DELETE FROM counters WHERE {_RECORDS['counters'][1]}", a).rowcount,
        }


def erase_tenant(store: Store, tenant_id: str) -> dict[str, int]:
    """A removed tenant's data (`tenant remove --erase`): its DKIM keys, its own suppressions, its sent copies,
    and the addresses, subjects and evidence in its records. Complaints, cases, bounces and events stay as
    counts, so the provider's figures and the abuse desk's history keep their numbers; global suppressions
    stay (they are recipients' opt-outs, not the tenant's). The caller holds the store's lock."""
    t = {"t": tenant_id, "erased": ERASED}
    return {
        "dkim_keys": store.execute("DELETE FROM dkim_keys WHERE tenant = :t", t).rowcount,
        "suppressions": store.execute("DELETE FROM suppressions WHERE scope = :t", t).rowcount,
        "sent": store.execute("DELETE FROM sent WHERE tenant = :t", t).rowcount,
        "complaints": store.execute(
            "UPDATE complaints SET recipient = NULL, token = NULL, source = NULL, user_agent = NULL, "
            "source_ip = NULL, reported_domain = NULL WHERE tenant = :t", t).rowcount,
        "cases": store.execute("UPDATE cases SET recipient = NULL, subject = NULL, evidence = :erased "
                               "WHERE tenant = :t", t).rowcount,
        "bounces": store.execute("UPDATE bounces SET recipient = :erased WHERE tenant = :t", t).rowcount,
        "events": store.execute("UPDATE events SET recipient = NULL, detail = NULL WHERE tenant = :t", t).rowcount,
    }
