"""Sending TLS-RPT reports (RFC 8460 §3): for each recipient domain with sessions counted on a UTC day and a
`_smtp._tls.DOMAIN` TXT record, the day's report mailed to its `mailto:` addresses through the relay itself
(the outbox: signed with the provider's key, from the provider domain) or POSTed to its `https:` ones.

Every node's housekeeping runs `send_day` for yesterday; the store's claim gives each domain's report to one
node only. `websofttt tls-report send --day D` runs the same by hand (a day already sent is skipped).
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.resolver

from policy import outbox, tls_reports
from policy.settings import Settings
from policy.store import Store
from relay.resolver import https_connector

log = logging.getLogger("websofttt.delivery")
POST_TIMEOUT = 30.0


async def rua(resolver: dns.asyncresolver.Resolver, domain: str) -> list[str]:
    """Where `domain` wants its reports; [] when it publishes no (valid) TLS-RPT record. A lookup that fails
    for now raises dns.exception.DNSException: the report waits for the next try."""
    try:
        answer = await resolver.resolve(f"_smtp._tls.{domain}", "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return tls_reports.destinations([b"".join(r.strings).decode("ascii", "replace") for r in answer])


async def rua_or_why(resolver: dns.asyncresolver.Resolver, domain: str) -> tuple[list[str], str]:
    """For the command line: (the rua, '') or ([], why the lookup failed)."""
    try:
        return await rua(resolver, domain), ""
    except dns.exception.DNSException as e:
        return [], f"lookup failed: {e}"


async def send_day(settings: Settings, store: Store, call: Callable[..., Awaitable[Any]],
                   resolver: dns.asyncresolver.Resolver, day: str) -> list[dict[str, Any]]:
    """Send the reports of `day` not yet sent by any node; what was done, one entry per domain sent to. A domain
    without a TLS-RPT record is claimed too (nothing to send, nothing to look up again); one whose lookup
    failed is left for the next run."""
    p = settings.provider
    done = []
    for domain in await call(tls_reports.domains, store, day, True):
        try:
            uris = await rua(resolver, domain)
        except dns.exception.DNSException as e:
            log.warning("TLS-RPT report of %s for %s waits: %s", domain, day, e)
            continue
        if not await call(tls_reports.claim, store, day, domain, settings.node.name) or not uris:
            continue
        report = await call(tls_reports.report, store, day, domain, p.domain, f"mailto:postmaster@{p.domain}")
        sent = []
        for uri in uris:
            if uri.startswith("mailto:"):
                address = uri.removeprefix("mailto:").split("?", 1)[0]
                await call(outbox.put, store, settings.node.name, address, tls_reports.mail(p, report, domain, address))
                sent.append({"to": uri, "result": "queued"})
            else:
                sent.append({"to": uri, "result": await _post(settings, resolver, uri, report)})
        log.info("TLS-RPT report of %s for %s: %s", domain, day, ", ".join(f"{s['to']} {s['result']}" for s in sent))
        done.append({"domain": domain, "day": day, "sent": sent})
    return done


async def _post(settings: Settings, resolver: dns.asyncresolver.Resolver, uri: str, report: dict[str, Any]) -> str:
    """POST the gzipped report (RFC 8460 §5.4); the HTTP status or what went wrong."""
    connector = https_connector(resolver, settings.delivery)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT)) as http:
            async with http.post(uri, data=tls_reports.gzipped(report), allow_redirects=False,
                                 headers={"Content-Type": tls_reports.MEDIA_TYPE}) as response:
                return f"HTTP {response.status}"
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        return f"failed: {e or type(e).__name__}"
