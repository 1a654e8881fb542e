"""What a complaint says about the message complained of.

ARF reports (RFC 5965 §3.1) name it in their machine-readable part; providers return it as
message/rfc822 or only its headers (text/rfc822-headers), often with the recipient redacted. People
forward it as an attachment, or paste its headers into the body. Either way the same fields identify our
copy: tokens (Return-Path, Original-Mail-From, List-Unsubscribe; collected by `classify`), the
Message-ID, the recipient, and the tenant headers we add (X-WebSoftTT-Tenant, Feedback-ID).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses

from inbound.dsn import Fields, address

MAX_VALUES = 20
_MSGID = re.compile(r"<[^<>\s]{1,250}>")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Report:
    feedback_type: str = ""             # ARF Feedback-Type, lower case; "" when no feedback report
    user_agent: str = ""
    version: str = ""
    arrival_date: str = ""
    source_ip: str = ""
    reported_domain: str = ""
    message_ids: tuple[str, ...] = ()   # Message-ID of the returned message
    recipients: tuple[str, ...] = ()    # Original-Rcpt-To, then the returned To (redacted ones match no copy)
    tenants: tuple[str, ...] = ()       # X-WebSoftTT-Tenant, then the tenant field of Feedback-ID


def describe(feedback: list[Fields], returned: list[Fields]) -> Report:
    """The report's fields from its feedback blocks and the returned (or pasted) header fields."""
    def first(name: str) -> str:
        return next((v for block in feedback for v in block.get(name, ()) if v), "")[:200]

    def values(name: str) -> list[str]:
        return [v for block in returned for v in block.get(name, ())]

    recipients = [address(v) for block in feedback for v in block.get("original-rcpt-to", ())]
    recipients += [a.lower() for _, a in getaddresses(values("to")) if "@" in a]
    tenants = [v.strip().lower() for v in values("x-websofttt-tenant")]
    tenants += [parts[1].strip().lower() for v in values("feedback-id") if len(parts := v.split(":")) == 3]
    return Report(
        feedback_type=first("feedback-type").lower(), user_agent=first("user-agent"), version=first("version"),
        arrival_date=first("arrival-date") or first("received-date"), source_ip=first("source-ip"),
        reported_domain=first("reported-domain"),
        message_ids=_unique(i for v in values("message-id") for i in _MSGID.findall(v)),
        recipients=_unique(r for r in recipients if r),
        tenants=_unique(t for t in tenants if _TENANT.match(t)))


def _unique(items) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))[:MAX_VALUES]
