"""SMTP replies: the enhanced status code a reply carries (RFC 3463, RFC 2034), read in one place for the
relay's own replies, the next hops' answers and the delivery outcome's labels."""
from __future__ import annotations

import re

_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?=\s|$)")


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
