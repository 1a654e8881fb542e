"""API keys: how a tenant's app reaches its own data over HTTP (`/v1/`, relay/api.py).

A key is 256 random bits with the prefix `wst_api_`, so that it is recognisable where it leaks (secret
scanners, logs). It is shown once; the store keeps its SHA-256 only. Guessing one is hopeless at any
speed, so a fast hash is enough, as for generated SMTP credentials (policy/credentials.py). A `read` key
reads; a `write` key also changes the tenant's suppressions and sends.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import asdict, dataclass
from enum import StrEnum

from policy.store import Store, utcnow
from policy.tenants import TenantError, require

PREFIX = "wst_api_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"


SCOPES = tuple(s.value for s in Scope)


@dataclass(frozen=True)
class ApiKey:
    tenant: str
    name: str
    scope: Scope
    created: str
    last_used: str | None

    def as_json(self) -> dict:
        return asdict(self)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add(store: Store, tenant_id: str, name: str | None, scope: str) -> tuple[ApiKey, str]:
    """A new key for the tenant: (its record, the key itself, to be shown once)."""
    require(store, tenant_id)
    name = name or f"key-{secrets.token_hex(3)}"
    if not _NAME.match(name):
        raise TenantError(f"--name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)")
    key = PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(tenant_id, name, Scope(scope), utcnow(), None)
    with store.exclusive():
        if store.one("SELECT 1 AS x FROM api_keys WHERE tenant = ? AND name = ?", [tenant_id, name]):
            raise TenantError(f"tenant {tenant_id} already has an API key named {name!r}")
        store.insert("api_keys", record.as_json() | {"hash": _hash(key)})
    return record, key


def find(store: Store, key: str) -> ApiKey | None:
    """The key's record, or None for anything that is not a current key (one indexed look-up)."""
    if not key.startswith(PREFIX):
        return None
    row = store.one("SELECT tenant, name, scope, created, last_used FROM api_keys WHERE hash = ?", [_hash(key)])
    return ApiKey(**row) if row else None


def touch(store: Store, key: ApiKey) -> None:
    """Note the key's use, to the minute: a busy key writes once a minute, not at every request."""
    now = utcnow()
    if (key.last_used or "")[:16] != now[:16]:
        store.execute("UPDATE api_keys SET last_used = ? WHERE tenant = ? AND name = ?", [now, key.tenant, key.name])


def of_tenant(store: Store, tenant_id: str) -> list[ApiKey]:
    require(store, tenant_id)
    return [ApiKey(**r) for r in store.all("SELECT tenant, name, scope, created, last_used FROM api_keys "
                                           "WHERE tenant = ? ORDER BY created, name", [tenant_id])]


def remove(store: Store, tenant_id: str, name: str) -> None:
    require(store, tenant_id)
    if not store.execute("DELETE FROM api_keys WHERE tenant = ? AND name = ?", [tenant_id, name]).rowcount:
        raise TenantError(f"tenant {tenant_id} has no API key named {name!r}")
