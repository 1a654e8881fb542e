"""Tenants' own DKIM keys, one per From domain, kept in the store so every node signs alike.

A copy From a domain with a key carries that domain's signature (DMARC-aligned) besides the
provider's; a copy From a domain without one carries the provider's signature only.
"""
from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from policy.keys import DkimKey, new_dkim_pem
from policy.store import Store, utcnow
from policy.tenants import TenantError, normalise_domain, require


@dataclass(frozen=True)
class TenantKey:
    domain: str
    tenant: str
    selector: str
    private_pem: str
    created: str

    def key(self) -> DkimKey:
        return serialization.load_pem_private_key(self.private_pem.encode(), password=None)


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
    return TenantKey(**store.one("SELECT * FROM dkim_keys WHERE domain = ?", [domain]))


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
