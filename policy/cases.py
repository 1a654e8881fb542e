"""Cases: what a person wrote to the abuse or privacy address, kept for a person on the desk to resolve.

A case id is short enough to quote in a reply (`A-20261125-7KQ2MD`: kind, day, random). The case keeps
the complainant, the subject, what was found (evidence: where the original was and whom it identified)
and the inbound message it came from; the raw message itself stays in the inbound mailbox for
`inbound.retention`. A person on the desk works a case to its end: assigns it, adds notes, closes it with a
resolution; each step is a row of its history (and an audit row, written by the command line). A reply
that quotes the case id joins the case's history and reopens it when it was closed.
"""
from __future__ import annotations

import base64
import os
import re
import time

from policy.store import Store, utcnow

KINDS = {"abuse": "A", "privacy": "P"}
SUMMARY = "id, kind, opened, status, tenant, acknowledged, assignee, closed"   # no addresses: listing needs no reason
CASE_ID = re.compile(r"\b([AP]-\d{8}-[A-Z2-7]{6})\b")


class CaseError(Exception):
    """A case request that cannot be carried out (unknown case, a closed one closed again): exit 2."""


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


def entries(store: Store, kind: str | None = None, open_only: bool = False, older_than: float = 0.0) -> list[dict]:
    """Cases, newest first; `open_only` and `older_than` (seconds since opened): what is overdue."""
    where, params = ["1 = 1"], list[str]()
    if kind:
        where, params = where + ["kind = ?"], params + [kind]
    if open_only:
        where.append("status = 'open'")
    if older_than:
        where, params = where + ["opened < ?"], params + [_ago(older_than)]
    return store.all(f"SELECT {SUMMARY} FROM cases WHERE {' AND '.join(where)} ORDER BY opened DESC, id", params)


def _ago(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))


def get(store: Store, case_id: str) -> dict | None:
    return store.one("SELECT * FROM cases WHERE id = ?", [case_id.strip().upper()])


def require(store: Store, case_id: str) -> dict:
    found = get(store, case_id)
    if found is None:
        raise CaseError(f"no case {case_id!r} (see websofttt case list)")
    return found


def history(store: Store, case_id: str) -> list[dict]:
    return store.all("SELECT time, author, action, text FROM case_history WHERE case_id = ? ORDER BY id",
                     [case_id.strip().upper()])


def _step(store: Store, case_id: str, author: str, action: str, text: str | None, **values: object) -> dict:
    with store.exclusive():
        found = require(store, case_id)
        if values:
            store.update("cases", ("id", found["id"]), values)
        store.insert("case_history", {"case_id": found["id"], "time": utcnow(), "author": author, "action": action,
                                      "text": text})
    return require(store, case_id)


def assign(store: Store, case_id: str, user: str, author: str) -> dict:
    if not user.strip():
        raise CaseError("USER is empty: name who works the case")
    return _step(store, case_id, author, "assigned", user.strip(), assignee=user.strip())


def note(store: Store, case_id: str, text: str, author: str) -> dict:
    if not text.strip():
        raise CaseError("TEXT is empty")
    return _step(store, case_id, author, "note", text.strip()[:2000])


def close(store: Store, case_id: str, resolution: str, author: str) -> dict:
    if not resolution.strip():
        raise CaseError("--resolution is empty: say how the case ended")
    if require(store, case_id)["status"] == "closed":
        raise CaseError(f"case {case_id.upper()} is already closed")
    return _step(store, case_id, author, "closed", resolution.strip()[:2000], status="closed", closed=utcnow(),
                 resolution=resolution.strip()[:2000])


def replied(store: Store, case_id: str, inbound_id: str) -> bool:
    """A reply quoting the case joins its history; a closed case opens again (its resolution kept in history).
    True when it reopened the case. A reply processed again after a crash is not added twice."""
    if store.one("SELECT 1 AS x FROM case_history WHERE case_id = ? AND text = ?",
                 [case_id.strip().upper(), f"inbound message {inbound_id}"]):
        return False
    reopen = require(store, case_id)["status"] == "closed"
    values: dict[str, object] = {"status": "open", "closed": None} if reopen else {}
    _step(store, case_id, "inbound", "reopened by a reply" if reopen else "reply", f"inbound message {inbound_id}",
          **values)
    return reopen


def quoted(store: Store, subject: str) -> str | None:
    """The id of an existing case the subject quotes (a reply keeps it there, as the acknowledgement asks)."""
    for found in CASE_ID.findall(subject.upper()):
        if get(store, found):
            return found
    return None


def open_stats(store: Store) -> tuple[int, str | None]:
    """(open cases, when the oldest open one was opened): the desk's backlog, for /metrics."""
    row = store.one("SELECT COUNT(*) AS n, MIN(opened) AS oldest FROM cases WHERE status = 'open'")
    return (row["n"], row["oldest"]) if row else (0, None)
