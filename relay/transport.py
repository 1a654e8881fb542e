"""Transport security for one recipient domain: which of its MX hosts may be used, and what each one's TLS must
prove, from DANE (RFC 7672) and MTA-STS (RFC 8461).

DANE comes first for a host that has it (RFC 8461 §2); MTA-STS decides for the others. In `enforce` mode only MX
hosts its `mx` patterns match are tried, each with STARTTLS and a certificate valid for its name; in `testing`
mode every host is tried as before and failures are only reported. Routes and the smarthost are the
operator's own next hops: neither applies to them (`smarthost_tls` is their check).
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from policy import mta_sts, tls_reports
from policy.settings import Settings
from policy.store import Store
from relay import dane
from relay.mta_sts import MtaSts
from relay.routing import Destination, Router, TlsPolicy

log = logging.getLogger("websofttt.delivery")


class Refused(Exception):
    """No destination of the domain may be used now: the copy is deferred with `reply`, never sent in clear."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


class Transport:
    """Applies the recipient domain's policies to its destinations; one per delivery worker."""

    def __init__(self, settings: Settings, router: Router, store: Store, call: Callable[..., Awaitable[Any]],
                 sessions: Callable[[tls_reports.Session], None] | None = None):
        """`sessions`: TLS-RPT's counter, told of failed MTA-STS policy fetches."""
        d = settings.delivery
        self.mta_sts = MtaSts(d, router.resolver, store, call, sessions=sessions) if d.mta_sts else None
        self.tlsa = dane.Tlsa(router.resolver, settings.dns) if d.dane and settings.dns.dnssec else None

    async def secure(self, domain: str, destinations: list[Destination]) -> list[Destination]:
        """The destinations to try, each with the TLS policy it must meet; Refused when none may be tried."""
        if not any(d.mx for d in destinations) or (self.mta_sts is None and self.tlsa is None):
            return destinations
        assessed = await self.assess(domain, destinations)
        chosen = [dest for dest, refused in assessed if not refused]
        if not chosen:
            raise Refused(next((r for _, r in assessed if r), f"451 4.7.5 No MX host of {domain} is usable"))
        return chosen

    async def assess(self, domain: str, destinations: list[Destination]) -> list[tuple[Destination, str]]:
        """Each destination with the TLS policy it must meet, and '' or the reply saying why it is not used
        (`websofttt dns check` shows them all)."""
        policy = await self.mta_sts.policy(domain) if self.mta_sts is not None else None
        assessed = []
        for dest in destinations:
            try:
                tls = await self._dane(domain, dest) or _sts(policy, domain, dest)
            except Refused as e:
                assessed.append((dest, e.reply))
                continue
            assessed.append((replace(dest, tls_policy=tls) if tls else dest, ""))
        return assessed

    async def close(self) -> None:
        if self.mta_sts is not None:
            await self.mta_sts.close()

    async def _dane(self, domain: str, dest: Destination) -> TlsPolicy | None:
        if self.tlsa is None or not dest.mx_secure:
            return None
        try:
            records = await self.tlsa.records(dest.host, dest.port)
        except dane.Bogus as e:
            log.warning("DANE: %s; %s not used", e, dest.host)
            raise Refused(f"451 4.7.5 {e}: the MX host cannot be authenticated (RFC 7672)") from None
        if records is None:
            return None
        return TlsPolicy("dane", domain, tlsa=dane.usable(records), text=tuple(dane.text(r) for r in records))


def _sts(policy: mta_sts.Policy | None, domain: str, dest: Destination) -> TlsPolicy | None:
    if policy is None or policy.mode == mta_sts.NONE:
        return None
    enforce = policy.mode == mta_sts.ENFORCE
    if enforce and not policy.matches(dest.host):
        raise Refused(f"451 4.7.5 MX host {dest.host} is not in the MTA-STS policy of {domain} "
                      f"(mx: {', '.join(policy.mx)})")
    return TlsPolicy("mta-sts", domain, enforce=enforce, text=policy.lines())
