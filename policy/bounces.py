"""Bounces, however they arrive (a 5xx while delivering, a DSN at bounce+TOKEN@): one set of rules.

- hard (the address does not exist: 5.1.x, unknown domain) → global suppression, cause hard_bounce;
- soft (4.x.x, 5.2.2 mailbox full) → counted per tenant and recipient; `soft_bounce_limit` within
  `soft_bounce_window` with no delivery in between → tenant-scope suppression that expires;
- policy (5.7.x, 4.7.x: a block, not the recipient's fault) and other permanent failures → recorded
  against the tenant only.
Every bounce is recorded first (table `bounces`), so rates per tenant can be computed from it; a hard
bounce may push the tenant over `policy.bounce_rate` (policy/standing).
"""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from policy import standing, suppression
from policy.settings import Policy
from policy.store import Store, utcnow



class Class(StrEnum):
    """What a failed copy means for its recipient (stored with the bounce, a metrics label)."""
    HARD = "hard"          # the address does not exist: suppressed for every tenant
    SOFT = "soft"          # full, or temporarily refused: suppressed for the tenant after soft_bounce_limit
    POLICY = "policy"      # refused for the sender or the content, not the address: never suppressed
    OTHER = "other"


class Reason(StrEnum):
    """Why a copy failed, as a bounce says it (inbound/bounce_reason.py reads it)."""
    MAILBOX_UNKNOWN = "mailbox_unknown"
    DOMAIN_UNKNOWN = "domain_unknown"
    MAILBOX_FULL = "mailbox_full"
    MESSAGE_TOO_LARGE = "message_too_large"
    POLICY = "policy"
    OTHER = "other"


HARD, SOFT, POLICY, OTHER = Class.HARD, Class.SOFT, Class.POLICY, Class.OTHER
_RECIPIENT_STATUS = re.compile(r"^5\.1\.(?!7$|8$)\d+$")       # 5.1.7/5.1.8 are about the sender


def bounce_class(status: str, permanent: bool, reason: str = "") -> Class:
    if reason == Reason.MAILBOX_FULL:        # said in words, whatever the status (`5.7.0 maildir over quota`)
        return SOFT
    if status.startswith(("5.7.", "4.7.")) or reason == Reason.POLICY:
        return POLICY
    if permanent and (_RECIPIENT_STATUS.match(status) or reason in (Reason.MAILBOX_UNKNOWN, Reason.DOMAIN_UNKNOWN)):
        return HARD             # a report that says it is temporary ("mailbox temporarily unavailable"): soft
    if not permanent or status == "5.2.2" or reason == Reason.MAILBOX_FULL:
        return SOFT
    return OTHER


def record(store: Store, rules: Policy, tenant: str, recipient: str, status: str, permanent: bool, reason: str,
           source: str) -> str:
    """Record one failed recipient and apply the rules; returns what was done, for the caller's record."""
    kind = bounce_class(status, permanent, reason)
    store.execute("INSERT INTO bounces (time, tenant, recipient, status, class, source) VALUES (?, ?, ?, ?, ?, ?)",
                  [utcnow(), tenant, recipient.lower(), status, kind, source])
    if kind == HARD:
        suppression.add(store, recipient, suppression.GLOBAL, suppression.Cause.HARD_BOUNCE, source=source)
        suspended = standing.enforce(store, rules, tenant)
        return "hard bounce: suppressed globally" + (f"; tenant {suspended}" if suspended else "")
    if kind == SOFT:
        key = _soft_key(tenant, recipient)
        count = store.hit(key, rules.soft_bounce_window)
        if count < rules.soft_bounce_limit:
            return f"soft bounce {count} of {rules.soft_bounce_limit}"
        until = datetime.now(UTC) + timedelta(seconds=rules.soft_bounce_suppression)
        suppression.add(store, recipient, tenant, suppression.Cause.SOFT_BOUNCE, source=source,
                        expires=until.strftime("%Y-%m-%dT%H:%M:%SZ"))
        store.reset(key)
        return f"soft bounce {count} of {rules.soft_bounce_limit}: suppressed for tenant {tenant} until {until:%Y-%m-%d}"
    return f"{kind} failure: recorded against tenant {tenant}, recipient not suppressed"


def delivered(store: Store, tenant: str, recipient: str) -> None:
    """A delivery ends a run of soft bounces."""
    store.reset(_soft_key(tenant, recipient))


def _soft_key(tenant: str, recipient: str) -> str:
    return f"soft:{tenant}:{recipient.lower()}"
