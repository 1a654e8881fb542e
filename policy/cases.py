"""Cases: what a person wrote to the abuse or privacy address, kept for a person on the desk to resolve.

A case id is short enough to quote in a reply (`A-20261125-7KQ2MD`: kind, day, random). The case keeps
the complainant, the subject, what was found (evidence: where the original was and whom it identified)
and the inbound message it came from; the raw message itself stays in the inbound mailbox for
`inbound.retention`.
"""
from __future__ import annotations

import base64
import os
import time

from policy.store import Store, utcnow

KINDS = {"abuse": "A", "privacy": "P"}
SUMMARY = "id, kind, opened, status, tenant, acknowledged"      # no addresses: listing needs no reason


def open_case(store: Store, kind: str, complainant: str, subject: str, evidence: str, inbound_id: str,
              tenant: str | None = None, recipient: str | None = None) -> str:
    if kind not in KINDS:
        raise ValueError(f"case kind {kind!r} is not one of {tuple(KINDS)}")
    case_id = (f"{KINDS[kind]}-{time.strftime('%Y%m%d', time.gmtime())}-"
               f"{base64.b32encode(os.urandom(5)).decode()[:6]}")
    store.insert("cases", {"id": case_id, "kind": kind, "opened": utcnow(), "complainant": complainant.lower(),
                              "subject": subject[:300], "evidence": evidence[:1000], "tenant": tenant,
                              "recipient": recipient.lower() if recipient else None, "status": "open",
                              "inbound_id": inbound_id, "acknowledged": 0})
    return case_id


def for_inbound(store: Store, inbound_id: str) -> str | None:
    """The case already opened for an inbound message (processing is repeated after a crash)."""
    row = store.one("SELECT id FROM cases WHERE inbound_id = ?", [inbound_id])
    return row["id"] if row else None


def acknowledged(store: Store, case_id: str) -> None:
    store.execute("UPDATE cases SET acknowledged = 1 WHERE id = ?", [case_id])


def entries(store: Store, kind: str | None = None) -> list[dict]:
    where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
    return store.all(f"SELECT {SUMMARY} FROM cases {where} ORDER BY opened DESC, id", params)


def get(store: Store, case_id: str) -> dict | None:
    return store.one("SELECT * FROM cases WHERE id = ?", [case_id.strip().upper()])
