"""Recipient addresses as the project compares and shows them: a leaf module (imports nothing of the project),
so that logging, which masks every address it writes, does not pull in the store."""
from __future__ import annotations


def normalise(address: str) -> str:
    """Addresses are compared case-insensitively: mail systems change case, recipients do not mean to."""
    return address.strip().strip("<>").lower()


def mask(address: str) -> str:
    """`jane@example.net` -> `j***@example.net`: enough to recognise, not enough to harvest or log."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"
