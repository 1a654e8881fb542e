"""SMTP credentials: one tenant per username, passwords kept only as salted scrypt hashes."""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re

from policy.store import Store, utcnow
from policy.tenants import TenantError, require

# scrypt cost: 32 MiB and about 0.1 s per check (above OWASP's minimum of N=2^14, r=8, p=1).
_N, _R, _P = 2 ** 15, 8, 1
_MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD = 12
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(stored: str, password: bytes) -> bool:
    """Constant-time comparison of the derived key; parameters are read from the stored hash."""
    _, n, r, p, salt, digest = stored.split("$")
    candidate = hashlib.scrypt(password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                               maxmem=_MAXMEM, dklen=32)
    return hmac.compare_digest(candidate, base64.b64decode(digest))


@functools.cache
def _dummy_hash() -> str:
    """Checked when the username is unknown, so that the reply takes as long as for a known one."""
    return hash_password(base64.b64encode(os.urandom(12)).decode())


def add(store: Store, tenant_id: str, username: str, password: str) -> None:
    require(store, tenant_id)
    if not _USERNAME.match(username):
        raise TenantError(f"username {username!r} must be letters, digits and . _ @ + - (at most 128)")
    if len(password) < MIN_PASSWORD:
        raise TenantError(f"the password must have at least {MIN_PASSWORD} characters")
    row = {"username": username, "tenant": tenant_id, "hash": hash_password(password), "created": utcnow(),
           "last_used": None}
    with store.exclusive():
        if store.one("SELECT 1 AS x FROM credentials WHERE username = ?", [username]):
            raise TenantError(f"username {username!r} already exists")
        store.insert("credentials", row)


def remove(store: Store, username: str) -> None:
    if not store.execute("DELETE FROM credentials WHERE username = ?", [username]).rowcount:
        raise TenantError(f"no username {username!r}")


def all_credentials(store: Store) -> list[dict]:
    """Usernames with their tenant and dates; never the hash."""
    return store.all("SELECT username, tenant, created, last_used FROM credentials ORDER BY tenant, username")


def lookup_hash(store: Store, username: str) -> tuple[str, str | None]:
    """(hash to check, tenant or None): a dummy hash for unknown users keeps the timing the same."""
    row = store.one("SELECT tenant, hash FROM credentials WHERE username = ?", [username])
    return (row["hash"], row["tenant"]) if row else (_dummy_hash(), None)


def touch(store: Store, username: str) -> None:
    store.execute("UPDATE credentials SET last_used = ? WHERE username = ?", [utcnow(), username])
