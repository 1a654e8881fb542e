"""SMTP replies and enhanced status codes (RFC 5321 §4.2, RFC 3463, RFC 2034), read in one place: the relay's
own replies, the next hops' answers, the delivery outcome's labels, and the codes that bounces quote in
their Status fields and in prose (inbound/dsn.py, inbound/bounce_reason.py)."""
from __future__ import annotations

import re

_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?=\s|$)")
# In what a bounce says: an enhanced code of any class in a DSN's Status field; a failure's enhanced code in
# prose, not a version (v4.6.1) or part of an address; a failure's reply code in prose; and the reply code,
# with its enhanced code if any, that begins a diagnostic.
STATUS_FIELD = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
FAILURE_STATUS = re.compile(r"(?<![\w.])([45])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
FAILURE_REPLY = re.compile(r"(?:^|(?<=[\s:;(\[\"'#]))(42[01]|45[0-5]|5[0-5]\d)(?=[\s:\-]|$)")
LEADING_REPLY = re.compile(r"([245]\d\d)[- ]((?:[245]\.\d{1,3}\.\d{1,3})?)\s*")


def enhanced(text: str) -> str:
    """The enhanced status code that begins `text`, a reply's text after its code ("5.1.1 No such user"
    -> "5.1.1"); '' if it begins with none."""
    m = _ENHANCED.match(text)
    return m.group(1) if m else ""


def status(reply: str) -> str:
    """The enhanced status code of a whole reply line ("451 4.4.1 Timed out" -> "4.4.1"), '' if none."""
    return enhanced(reply[4:]) if reply[:3].isdigit() and reply[3:4] in (" ", "-") else ""


def label(reply: str) -> str:
    """The enhanced status code of a reply, else its class ("4.0.0"): a bounded metrics label."""
    return status(reply) or f"{reply[:1] or '4'}.0.0"
