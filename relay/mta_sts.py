"""MTA-STS policies as one delivery worker sees them (RFC 8461 §3, §5): the TXT record, the policy fetched over
verified HTTPS, and the store's copy that every node shares.

A domain is looked at again once its TXT record's TTL has passed (at least MIN_RECHECK), never per copy: in
between, the policy in force is kept in memory. A fetch that fails leaves the stored policy in force while it
is fresh (RFC 8461 §5.1); with none, the domain has no policy. Each failure is logged once per domain until it
changes, not per message. Policy hosts on private or loopback addresses are refused unless
`[delivery] https_private_hosts` (tests, internal domains).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from cachetools import LRUCache, TLRUCache
import dns.asyncresolver
import dns.exception
import dns.resolver

from policy import mta_sts, tls_reports
from policy.mta_sts import Policy, PolicyError
from policy.settings import Delivery
from policy.store import Store
from relay.resolver import https_connector

log = logging.getLogger("websofttt.delivery")
MIN_RECHECK, MAX_RECHECK = 60.0, 3600.0       # seconds a domain's answer is kept in memory, whatever its TTL
FAILED_RECHECK = 60.0                         # ... after a lookup or fetch failed
FETCH_TIMEOUT = 20.0                          # RFC 8461 §3.3 asks for "a reasonable timeout"
MEMO_SIZE = 100_000                           # domains whose answer a worker keeps in memory, at most
PATH = "/.well-known/mta-sts.txt"


class FetchError(Exception):
    """The policy could not be had; `result` is the RFC 8460 result type to report."""

    def __init__(self, result: str, text: str):
        super().__init__(text)
        self.result = result


class MtaSts:
    """The MTA-STS policies of recipient domains; one per delivery worker."""

    def __init__(self, delivery: Delivery, resolver: dns.asyncresolver.Resolver, store: Store,
                 call: Callable[..., Awaitable[Any]], clock: Callable[[], float] = time.time,
                 sessions: Callable[[tls_reports.Session], None] | None = None):
        """`sessions`: told of each failed policy fetch, for TLS-RPT (RFC 8460 §4.3.2)."""
        self._delivery = delivery
        self._sessions = sessions
        self._resolver = resolver
        self._store = store
        self._call = call                                       # runs a store function off the event loop
        self._clock = clock
        # domain -> (look again at, policy in force), each entry dropped at its time; bounded, as a worker may
        # meet millions of domains
        self._memo: TLRUCache[str, tuple[float, Policy | None]] = TLRUCache(MEMO_SIZE, lambda _k, v, _n: v[0],
                                                                            timer=clock)
        self._inflight: dict[str, asyncio.Task[Policy | None]] = {}
        self._failures: LRUCache[str, str] = LRUCache(MEMO_SIZE)     # domain -> the failure last logged
        self._session: aiohttp.ClientSession | None = None

    async def policy(self, domain: str) -> Policy | None:
        """The policy in force for `domain` (None: it has none, or only a stale one it no longer publishes)."""
        memo = self._memo.get(domain)
        if memo is not None:
            return memo[1]
        task = self._inflight.get(domain)
        if task is None:
            task = self._inflight[domain] = asyncio.create_task(self._refresh(domain))
            task.add_done_callback(lambda _: self._inflight.pop(domain, None))
        return await asyncio.shield(task)

    async def _refresh(self, domain: str) -> Policy | None:
        now = self._clock()
        stored = await self._call(mta_sts.cached, self._store, domain)
        kept = stored if stored is not None and stored.fresh(now) else None
        try:
            answer = await self._resolver.resolve(f"_mta-sts.{domain}", "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return self._remember(domain, now + MIN_RECHECK, kept)     # no record: a cached policy still holds
        except dns.exception.DNSException as e:
            self._failed(domain, f"TXT lookup failed: {e}")
            return self._remember(domain, now + FAILED_RECHECK, kept)
        recheck = now + min(MAX_RECHECK, max(MIN_RECHECK, answer.rrset.ttl if answer.rrset else 0))
        try:
            policy_id = mta_sts.record_id([b"".join(r.strings).decode("ascii", "replace") for r in answer])
        except PolicyError as e:
            self._failed(domain, str(e))
            return self._remember(domain, recheck, kept)
        if kept is not None and kept.policy_id == policy_id:
            return self._remember(domain, recheck, kept)
        try:
            policy = mta_sts.parse_policy(await self._fetch(domain), policy_id, now)
        except (FetchError, PolicyError) as e:
            if self._sessions is not None:
                self._sessions(tls_reports.Session(domain, "sts", (), "", "", getattr(e, "result", "sts-policy-invalid")))
            self._failed(domain, f"policy not used: {e}")
            return self._remember(domain, now + FAILED_RECHECK, kept)
        await self._call(mta_sts.save, self._store, domain, policy)
        self._failures.pop(domain, None)
        log.info("MTA-STS policy of %s: mode %s, mx %s, max_age %ss (id %s)", domain, policy.mode,
                 ",".join(policy.mx) or "-", policy.max_age, policy_id)
        return self._remember(domain, recheck, policy)

    def _remember(self, domain: str, until: float, policy: Policy | None) -> Policy | None:
        """Keep the answer until `until`, or until the policy's max_age runs out if that comes first (but at
        least MIN_RECHECK: a tiny max_age must not mean a lookup per copy)."""
        if policy is not None:
            until = min(until, max(policy.fetched + policy.max_age, self._clock() + MIN_RECHECK))
        self._memo[domain] = (until, policy)
        return policy

    def _failed(self, domain: str, why: str) -> None:
        if self._failures.get(domain) != why:
            self._failures[domain] = why
            log.warning("MTA-STS for %s: %s", domain, why)

    async def _fetch(self, domain: str) -> str:
        """The policy text from https://mta-sts.DOMAIN/.well-known/mta-sts.txt (RFC 8461 §3.3): a verified
        certificate, 200 and text/plain, no redirect, at most 64 KB."""
        port = self._delivery.mta_sts_https_port
        url = f"https://mta-sts.{domain}{'' if port == 443 else f':{port}'}{PATH}"
        try:
            async with self._client().get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise FetchError("sts-policy-fetch-error", f"{url} answered HTTP {response.status}")
                if response.content_type != "text/plain":
                    raise FetchError("sts-policy-invalid", f"{url} is {response.content_type}, not text/plain")
                body = await response.content.read(mta_sts.MAX_POLICY_BYTES + 1)
                if len(body) > mta_sts.MAX_POLICY_BYTES:
                    raise FetchError("sts-policy-invalid", f"{url} is larger than 64 KB")
                return body.decode(response.charset or "utf-8", "replace")
        except aiohttp.ClientConnectorCertificateError as e:
            raise FetchError("sts-webpki-invalid", f"{url}: certificate not valid: {e.certificate_error}") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise FetchError("sts-policy-fetch-error", f"{url}: {e or type(e).__name__}") from None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=https_connector(self._resolver, self._delivery),
                                                  timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
                                                  headers={"User-Agent": "WebSoftTT-Relay MTA-STS"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
