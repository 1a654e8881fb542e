"""Logins already verified, so a web app that opens a connection per message pays scrypt once an hour.

An entry is HMAC-SHA-256, under a random key of this process that is never stored, of the client
address, username, secret and the credential's stored hash. So no password is kept; a credential that
is removed or changed no longer matches at its next login, on every worker and node (the stored hash
is read from the store at each login); and an entry proves the pair only for the address that proved
it, which is why a match may pass the username's lockout (see Authenticator.check). Failures are
never kept. `ttl` 0 turns the cache off.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable

from cachetools import TTLCache


class VerifiedLogins:
    def __init__(self, ttl: float, size: int, clock: Callable[[], float] = time.monotonic):
        self._key = os.urandom(32)
        self._seen: TTLCache | None = TTLCache(size, ttl, timer=clock) if ttl > 0 and size > 0 else None

    def _digest(self, ip: str, username: str, secret: bytes, stored: str) -> bytes:
        parts = (ip.encode(), username.encode(), secret, stored.encode())
        return hmac.digest(self._key, b"\0".join(len(p).to_bytes(4, "big") + p for p in parts), hashlib.sha256)

    def verified(self, ip: str, username: str, secret: bytes, stored: str) -> bool:
        return self._seen is not None and self._digest(ip, username, secret, stored) in self._seen

    def remember(self, ip: str, username: str, secret: bytes, stored: str) -> None:
        if self._seen is not None:
            self._seen[self._digest(ip, username, secret, stored)] = True
