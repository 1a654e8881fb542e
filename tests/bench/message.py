"""The one message every path sends: 4 KB on the wire, with the headers the relay's policy requires.

smtp-source's own generated message has no Subject unless -S is given and differs in size from
path to path; the relay refuses a message without Subject (554 5.6.0) and one whose From is not on
the tenant's domain (550 5.7.1). So every path sends this same prepared message: smtp-source with
`-F FILE` (it sends the file as is, adds CRLF after each line and dot-stuffs; it adds no headers of
its own with -F) and the load generator with the same bytes.
"""
from __future__ import annotations

from email.utils import formatdate
from pathlib import Path

SENDER = "app@example.com"
RECIPIENT = "rcpt@example.net"
SIZE = 4096


def build(size: int = SIZE) -> bytes:
    """Headers plus a plain-text body padded to exactly `size` octets with CRLF line ends."""
    headers = [
        f"From: Bench App <{SENDER}>",
        f"To: <{RECIPIENT}>",
        "Subject: WebSoftTT relay benchmark message",
        f"Date: {formatdate(localtime=False, usegmt=True)}",
        "Message-ID: <bench-message@example.com>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
    ]
    text = "\r\n".join(headers) + "\r\n\r\n"
    line = "The quick brown fox jumps over the lazy dog; benchmark filler 0123456789"[:70] + "\r\n"
    while size - len(text) >= len(line) + 3:
        text += line
    text += "x" * (size - len(text) - 2) + "\r\n"      # the last line makes up the exact size
    data = text.encode("ascii")
    assert len(data) == size, len(data)
    return data


def write_for_smtp_source(data: bytes, path: Path) -> None:
    """smtp-source -F appends CRLF to every line it reads, so the file has bare LF line ends."""
    path.write_bytes(data.replace(b"\r\n", b"\n"))
