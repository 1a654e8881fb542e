"""Complaints: a recipient, or a mailbox provider on their behalf, reported a tenant's copy as unwanted.

Recorded first, then decided in one place (`record`):
- Feedback-Type abuse, fraud, virus or other (and human complaints, recorded as abuse) suppress the
  recipient for that tenant (cause `complaint`); not-spam, auth-failure and unknown types are recorded only;
- a complaint counts towards the tenant's complaint rate only when the copy was identified by something
  only its recipient could have: a valid token or the Message-ID of a copy we sent. Headers anyone can
  write (X-WebSoftTT-Tenant, Feedback-ID) and a From address are recorded for the operator but never
  count, so a stranger cannot push a tenant into suspension;
- one complaint per copy (the token is unique), however many reports arrive about it.
"""
from __future__ import annotations

from dataclasses import dataclass

from policy import events, sent, standing, suppression
from policy.settings import Policy
from policy.store import Store, utcnow
from policy.addresses import mask

ACTING = ("abuse", "fraud", "virus", "other")
VERIFIED = ("token", "message_id")       # identification routes that prove the copy was ours and theirs
ROUTES = (*VERIFIED, "recipient", "header")


@dataclass(frozen=True)
class Details:
    """What an ARF report says about itself (RFC 5965 §3.1); empty for human complaints."""
    user_agent: str = ""
    source_ip: str = ""
    reported_domain: str = ""
    arrival_date: str = ""


def record(store: Store, rules: Policy, tenant: str, recipient: str | None, feedback_type: str, identified_by: str,
           token: str | None, source: str, case_id: str | None = None,
           details: Details = Details()) -> tuple[bool, str]:
    """Record one complaint and apply the rules; returns (new, what was done) for the inbound record."""
    if identified_by not in ROUTES:
        raise ValueError(f"identified_by {identified_by!r} is not one of {ROUTES}")
    acting = feedback_type in ACTING
    counted = acting and identified_by in VERIFIED
    row = [utcnow(), tenant, recipient.lower() if recipient else None, feedback_type, identified_by, int(counted),
           token, source, case_id, details.user_agent[:200], details.source_ip[:64], details.reported_domain[:255],
           details.arrival_date[:64]]
    cur = store.execute(
        "INSERT INTO complaints (received, tenant, recipient, feedback_type, identified_by, counted, token, source, "
        "case_id, user_agent, source_ip, reported_domain, arrival_date) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(token) DO NOTHING", row)
    who = f"{mask(recipient)} ({tenant})" if recipient else f"tenant {tenant}, recipient unknown"
    if cur.rowcount == 0:
        return False, f"complaint about {who} already recorded for this copy"
    if not acting:
        return True, f"{feedback_type} report about {who}: recorded only"
    done = [f"complaint about {who} recorded ({identified_by})"]
    if recipient:
        events.record(store, "complained", tenant, feedback_type, _queue_of(store, token), recipient.lower())
    if recipient and identified_by != "header":
        suppression.add(store, recipient, tenant, suppression.Cause.COMPLAINT, source=source)
        done.append("suppressed for the tenant")
    if not counted:
        done.append("not counted towards the complaint rate (unverified)")
    elif reason := standing.enforce(store, rules, tenant):
        done.append(f"tenant {reason}")
    return True, "; ".join(done)


def entries(store: Store, tenant: str | None = None) -> list[dict]:
    """Complaints, newest first (individual records: callers audit before showing them)."""
    where, params = ("WHERE tenant = ?", [tenant]) if tenant else ("", [])
    return store.all(f"SELECT id, received, tenant, recipient, feedback_type, identified_by, counted, case_id AS \"case\", "
                     f"source, user_agent, source_ip, reported_domain, arrival_date FROM complaints {where} "
                     f"ORDER BY id DESC", params)


def _queue_of(store: Store, token: str | None) -> str | None:
    copy = sent.lookup(store, token) if token else None
    return copy.queue_id if copy else None
