"""DKIM keys kept in the store so every node signs alike: tenants' own keys, and the provider's rotations.

A copy From a tenant domain with a key carries that domain's signature (DMARC-aligned) besides the
provider's; a copy From a domain without one carries the provider's signature only.

Rotation (`dkim rotate`): a new provider RSA key under a new selector, which signs from `active_from`
(now + `dkim.rotation_delay`, so its DNS record is published and cached first). Until the first
rotation the key file made by `init` signs. The key a rotation replaced stays published for
RETIRED_KEEP, so copies signed with it still verify while they are read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

from cryptography.hazmat.primitives import serialization

from policy.keys import DkimKey, generate_dkim_key, new_dkim_pem
from policy.settings import Settings
from policy.store import Store, utcnow
from policy.tenants import TenantError, normalise_domain, require


def _load(private_pem: str) -> DkimKey:
    """A key this module generated (RSA or Ed25519, see policy/keys.py)."""
    return cast(DkimKey, serialization.load_pem_private_key(private_pem.encode(), password=None))


@dataclass(frozen=True)
class TenantKey:
    domain: str
    tenant: str
    selector: str
    private_pem: str
    created: str

    def key(self) -> DkimKey:
        return _load(self.private_pem)


def add_domain(store: Store, tenant_id: str, domain: str, selector: str) -> TenantKey:
    """Generate a key for one of the tenant's allowed From domains (kept if it already has one)."""
    tenant = require(store, tenant_id)
    domain = normalise_domain(domain)
    if domain not in tenant.allowed_from:
        raise TenantError(f"{domain} is not an allowed From domain of tenant {tenant_id} "
                          f"(allowed: {', '.join(tenant.allowed_from) or 'none'})")
    existing = store.one("SELECT * FROM dkim_keys WHERE domain = ?", [domain])
    if existing and existing["tenant"] != tenant_id:
        raise TenantError(f"{domain} already has a DKIM key of another tenant")
    if not existing:
        store.execute("INSERT INTO dkim_keys (domain, tenant, selector, private_pem, created) VALUES (?, ?, ?, ?, ?)",
                      [domain, tenant_id, selector, new_dkim_pem().decode(), utcnow()])
    return TenantKey(**store.row("SELECT * FROM dkim_keys WHERE domain = ?", [domain]))


def all_keys(store: Store, tenant_id: str | None = None) -> list[TenantKey]:
    if tenant_id is None:
        return [TenantKey(**r) for r in store.all("SELECT * FROM dkim_keys ORDER BY domain")]
    return [TenantKey(**r) for r in store.all("SELECT * FROM dkim_keys WHERE tenant = ? ORDER BY domain", [tenant_id])]


def hosted_selector(key: TenantKey) -> str:
    """The selector under the provider's domain that a tenant may CNAME to, so the provider can rotate the key."""
    return f"{key.selector}-{key.domain.replace('.', '-')}"


def find(store: Store, tenant_id: str, domain: str) -> TenantKey | None:
    row = store.one("SELECT * FROM dkim_keys WHERE tenant = ? AND domain = ?", [tenant_id, domain.lower()])
    return TenantKey(**row) if row else None


RETIRED_KEEP = 7 * 86400
ALWAYS = "1970-01-01T00:00:00Z"     # active_from of a first key kept in the store


def ensure_provider_key(store: Store, settings: Settings) -> str:
    """Create the provider's first RSA key if there is none; return where it lives. Nodes sharing a
    PostgreSQL store keep it in the store (the first `init` makes it, later ones find it), so every node
    signs with the same key; otherwise, or when `[dkim] key_file` is configured, it is a file."""
    if settings.store.url and settings.dkim.key_file is None:
        store.execute("INSERT INTO provider_dkim_keys (selector, private_pem, created, active_from) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT(selector) DO NOTHING", [settings.dkim.selector, new_dkim_pem().decode(), utcnow(),
                                                           ALWAYS])
        return f"{store.where} (provider_dkim_keys, selector {settings.dkim.selector})"
    generate_dkim_key(settings.dkim_key)
    return str(settings.dkim_key)


@dataclass(frozen=True)
class ProviderKey:
    selector: str
    private_pem: str
    created: str
    active_from: str

    def key(self) -> DkimKey:
        return _load(self.private_pem)


def rotate(store: Store, selector: str, delay: float) -> ProviderKey:
    active_from = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + delay))
    with store.exclusive():
        if store.one("SELECT 1 AS x FROM provider_dkim_keys WHERE selector = ?", [selector]):
            raise TenantError(f"selector {selector!r} is already in use; give another with --selector")
        store.execute("INSERT INTO provider_dkim_keys (selector, private_pem, created, active_from) VALUES (?, ?, ?, ?)",
                      [selector, new_dkim_pem().decode(), utcnow(), active_from])
    return ProviderKey(**store.row("SELECT * FROM provider_dkim_keys WHERE selector = ?", [selector]))


def provider_rotations(store: Store) -> list[ProviderKey]:
    """Every rotated provider key, oldest first."""
    return [ProviderKey(**r) for r in store.all("SELECT * FROM provider_dkim_keys ORDER BY active_from, selector")]


def signing_rotation(store: Store) -> ProviderKey | None:
    """The rotated key that signs now (the newest already active), or None: the key file signs."""
    row = store.one("SELECT * FROM provider_dkim_keys WHERE active_from <= ? ORDER BY active_from DESC LIMIT 1",
                    [utcnow()])
    return ProviderKey(**row) if row else None

