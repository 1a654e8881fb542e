"""Which keys sign a copy, kept current, and the signing itself, for the delivery loop.

A copy is signed by the tenant's key for its From domain first (DMARC alignment), then by the provider's
keys (identification). The provider's keys are read again every KEY_REFRESH, so a rotation becomes
active without a restart, and at SIGHUP; what the store says of a tenant's key (or its absence) is kept
TENANT_KEY_TTL. Reads go through `store.call`, so they never hold the event loop on PostgreSQL.
"""
from __future__ import annotations

import asyncio
import logging
import time

from policy import dkimkeys, metrics
from policy.cache import Recent
from policy.settings import Settings
from policy.store import Store
from relay.signing import SigningKey, provider_keys, sign

log = logging.getLogger("websofttt.delivery")

TENANT_KEY_TTL = 30.0         # seconds a tenant domain's key (or its absence) is kept
KEY_REFRESH = 60.0            # seconds between re-reads of the provider's keys (a rotation becomes active)
SIGN_IN_THREAD = 256 * 1024   # bytes over which a copy is signed in a thread: hashing megabytes would hold
                              # every session of this worker's event loop


class Signer:
    def __init__(self, settings: Settings, store: Store):
        self.settings, self.store = settings, store
        self._tenant_keys: Recent[SigningKey | None] = Recent(TENANT_KEY_TTL)
        self.reload()

    def reload(self) -> None:
        """Read the provider's keys now (at start and SIGHUP) and forget the tenants' keys."""
        self._read(provider_keys(self.settings, self.store))

    def _read(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self._tenant_keys.clear()
        self._loaded = time.monotonic()

    async def refresh(self) -> None:
        """Every KEY_REFRESH, from the loop and before a copy is signed (fresh mail starts without the loop)."""
        if time.monotonic() - self._loaded >= KEY_REFRESH:
            self._loaded = time.monotonic()      # one reload at a time
            try:
                self._read(await self.store.call(provider_keys, self.settings, self.store))
            except Exception as e:      # a busy store or a damaged key: keep signing with the keys we have
                log.error("cannot reload DKIM keys, keeping the current ones: %s", e)

    async def sign(self, tenant: str, from_domain: str | None, copy: bytes) -> bytes:
        """`copy` under its DKIM signatures; raises SigningError."""
        keys = await self._keys(tenant, (from_domain or "").lower())
        with metrics.dkim_signing.time():
            return (await asyncio.to_thread(sign, copy, keys) if len(copy) > SIGN_IN_THREAD
                    else sign(copy, keys)) + copy

    async def _keys(self, tenant: str, domain: str) -> list[SigningKey]:
        await self.refresh()
        key = await self._tenant_keys.get((tenant, domain), lambda: self.store.call(
            _tenant_key, self.store, tenant, domain)) if domain else None
        return [key, *self.keys] if key else self.keys


def _tenant_key(store: Store, tenant: str, domain: str) -> SigningKey | None:
    found = dkimkeys.find(store, tenant, domain)
    return SigningKey(found.domain, found.selector, found.key()) if found else None
