"""Per-recipient tokens: an unguessable id plus a truncated HMAC-SHA256 under a server key.

A token names one sent copy (tenant, recipient, message). It is RFC 4648 base32, lower case, no
padding, and compared case-insensitively because mail systems may change the case of a local part.
The key id travels in the token, so a new key can be added while tokens under the old one still verify.
The first key is made by the first `init` and kept in the store (or `[tokens] secret_file`); a later
`init` never replaces it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path

from policy.keys import write_private
from policy.store import Store, utcnow

KEY_PREFIX = "token-key:"
_ID, _MAC = 10, 10          # 80 random bits, 80 MAC bits: 34 characters, "unsubscribe+" + token fits 64


class TokenError(Exception):
    """No token key is available (the node was not initialised)."""


def ensure_secret(store: Store, secret_file: Path | None) -> str:
    """Create the first token key if there is none; return where it lives."""
    if secret_file is not None:
        if not secret_file.exists():
            write_private(secret_file, base64.b64encode(os.urandom(32)) + b"\n")
        return str(secret_file)
    store.execute("INSERT INTO secrets (name, value, created) VALUES (?, ?, ?) ON CONFLICT(name) DO NOTHING",
                  [KEY_PREFIX + "1", base64.b64encode(os.urandom(32)).decode(), utcnow()])
    return f"{store.where} (secrets table)"


class TokenKeys:
    """The keys, loaded once per process; the newest signs, all verify."""

    def __init__(self, keys: dict[int, bytes]):
        if not keys:
            raise TokenError("no token key: run 'websofttt init'")
        self.keys = keys
        self.current = max(keys)

    @classmethod
    def load(cls, store: Store, secret_file: Path | None) -> TokenKeys:
        if secret_file is not None:
            return cls({1: base64.b64decode(secret_file.read_bytes().strip())})
        rows = store.all("SELECT name, value FROM secrets WHERE name LIKE ?", [KEY_PREFIX + "%"])
        return cls({int(r["name"][len(KEY_PREFIX):]): base64.b64decode(r["value"]) for r in rows})

    def _mac(self, key_id: int, body: bytes) -> bytes:
        return hmac.new(self.keys[key_id], body, hashlib.sha256).digest()[:_MAC]

    def issue(self) -> str:
        body = os.urandom(_ID) + bytes([self.current])
        return base64.b32encode(body + self._mac(self.current, body)).decode().rstrip("=").lower()

    def verify(self, token: str) -> bool:
        """True only for a token this provider issued, unaltered (any case)."""
        try:
            raw = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
        except (binascii.Error, ValueError):
            return False
        if len(raw) != _ID + 1 + _MAC or raw[_ID] not in self.keys:
            return False
        return hmac.compare_digest(raw[_ID + 1:], self._mac(raw[_ID], raw[:_ID + 1]))
