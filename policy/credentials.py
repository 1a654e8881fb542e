"""SMTP credentials: one tenant per username, in two kinds.

- A password chosen by a person is kept as a salted scrypt hash (slow on purpose: such passwords are
  guessable, and a stolen store must not give them away).
- A generated credential (`credential add --generate`) is a random secret of 256 bits with the prefix
  `wst_smtp_`, so that it is recognisable where it leaks. Guessing it is hopeless at any speed, so the
  store keeps its SHA-256 and a check costs microseconds, as SES, Postal and Mailgun do for theirs.

What a check takes depends only on the secret presented, never on what is stored, so the time of an
answer tells nothing about whether a username exists or which kind it is: a secret with the prefix is
always checked by SHA-256, anything else takes as long as scrypt (relay/auth.py spends that time
asleep when nothing could match).
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import secrets
from enum import StrEnum

from policy.store import Store, utcnow
from policy.tenants import TenantError, require

# scrypt cost: 32 MiB and about 0.1 s per check (above OWASP's minimum of N=2^14, r=8, p=1).
_N, _R, _P = 2 ** 15, 8, 1
_MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD = 12
PREFIX = "wst_smtp_"
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


class Kind(StrEnum):
    PASSWORD = "password"        # chosen by a person: scrypt
    GENERATED = "generated"      # made here, 256 bits: SHA-256


def kind_of(stored: str) -> Kind:
    return Kind.GENERATED if stored.startswith("sha256$") else Kind.PASSWORD


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def _hash_generated(secret: bytes) -> str:
    return "sha256$" + hashlib.sha256(secret).hexdigest()


_DUMMY_GENERATED = _hash_generated(os.urandom(32))      # compared when a prefixed secret has no match


def verify_password(stored: str, password: bytes) -> bool:
    """Constant-time check; the cost (microseconds or scrypt's ~0.1 s) follows the presented secret."""
    if password.startswith(PREFIX.encode()):
        candidate = _hash_generated(password)
        return hmac.compare_digest(candidate, stored if kind_of(stored) is Kind.GENERATED else _DUMMY_GENERATED)
    if kind_of(stored) is Kind.GENERATED:
        stored = dummy_hash()        # no person's password matches a generated credential; take as long
    _, n, r, p, salt, digest = stored.split("$")
    derived = hashlib.scrypt(password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=_MAXMEM, dklen=32)
    return hmac.compare_digest(derived, base64.b64decode(digest))


def is_slow(password: bytes) -> bool:
    """Whether checking this secret costs scrypt (worth a thread and worth caching)."""
    return not password.startswith(PREFIX.encode())


@functools.cache
def dummy_hash() -> str:
    """Checked when the username is unknown, so that the reply takes as long as for a known one."""
    return hash_password(base64.b64encode(os.urandom(12)).decode())


def add(store: Store, tenant_id: str, username: str, password: str) -> None:
    """A person's password, kept as scrypt."""
    if len(password) < MIN_PASSWORD:
        raise TenantError(f"the password must have at least {MIN_PASSWORD} characters")
    if password.startswith(PREFIX):
        raise TenantError(f"a password may not begin with {PREFIX!r}, the prefix of generated credentials "
                          f"(use --generate)")
    _insert(store, tenant_id, username, hash_password(password))


def generate(store: Store, tenant_id: str, username: str) -> str:
    """A new generated credential; the secret is returned once and only its SHA-256 is stored."""
    secret = PREFIX + secrets.token_urlsafe(32)
    _insert(store, tenant_id, username, _hash_generated(secret.encode()))
    return secret


def _insert(store: Store, tenant_id: str, username: str, stored: str) -> None:
    require(store, tenant_id)
    if not _USERNAME.match(username):
        raise TenantError(f"username {username!r} must be letters, digits and . _ @ + - (at most 128)")
    row = {"username": username, "tenant": tenant_id, "hash": stored, "created": utcnow(), "last_used": None}
    with store.exclusive():
        if store.one("SELECT 1 AS x FROM credentials WHERE username = ?", [username]):
            raise TenantError(f"username {username!r} already exists")
        store.insert("credentials", row)


def remove(store: Store, username: str) -> None:
    if not store.execute("DELETE FROM credentials WHERE username = ?", [username]).rowcount:
        raise TenantError(f"no username {username!r}")


def all_credentials(store: Store) -> list[dict]:
    """Usernames with their tenant, kind and dates; never the hash."""
    rows = store.all("SELECT username, tenant, hash, created, last_used FROM credentials ORDER BY tenant, username")
    return [{"username": r["username"], "tenant": r["tenant"], "kind": kind_of(r["hash"]).value,
             "created": r["created"], "last_used": r["last_used"]} for r in rows]


def lookup_hash(store: Store, username: str) -> tuple[str, str | None]:
    """(hash to check, tenant or None): a dummy hash for unknown users keeps the timing the same."""
    row = store.one("SELECT tenant, hash FROM credentials WHERE username = ?", [username])
    return (row["hash"], row["tenant"]) if row else (dummy_hash(), None)


def touch(store: Store, username: str) -> None:
    store.execute("UPDATE credentials SET last_used = ? WHERE username = ?", [utcnow(), username])
