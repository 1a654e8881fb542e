"""The relay's DNS: one resolver made from `[dns]`, used for every lookup delivery makes (MX, the MX hosts'
addresses, MTA-STS and TLS-RPT TXT records, TLSA), and the AD bit read as "DNSSEC-secure" only when
`dns.dnssec` says the servers are validating resolvers the relay trusts (as Postfix's
`smtp_dns_support_level = dnssec`).
"""
from __future__ import annotations

import ipaddress
import socket
import ssl
import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.nameserver
import dns.resolver

from policy.settings import Delivery, Dns

LIFETIME = 10.0        # seconds one lookup may take, all servers and retries together
EDNS_PAYLOAD = 1232    # the DNS flag day 2020 size: no fragmented UDP answers


def make_resolver(settings: Dns) -> dns.asyncresolver.Resolver:
    """`[dns] nameservers` when given, else the system's (/etc/resolv.conf, read now); with `dnssec`, queries
    ask for DNSSEC records and the AD bit (RFC 6840 §5.7), so that answers say whether they validated."""
    resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
    if settings.nameservers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in settings.nameservers]
    if settings.dnssec:
        resolver.use_edns(0, dns.flags.DO, EDNS_PAYLOAD)
        resolver.flags = dns.flags.RD | dns.flags.AD
    resolver.lifetime = LIFETIME
    return resolver


def secure(answer: dns.resolver.Answer, settings: Dns) -> bool:
    """The answer validated (RFC 4035 §3.2.3): the AD bit from a resolver that `dns.dnssec` trusts."""
    return settings.dnssec and bool(answer.response.flags & dns.flags.AD)


async def addresses(resolver: dns.asyncresolver.Resolver, host: str) -> list[str]:
    """The host's IPv4 then IPv6 addresses; [] when it has none. Raises dns.exception.DNSException when the
    servers fail (a temporary error)."""
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host, rdtype)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
        found.extend(r.address for r in answer)
    return found


class DnsResolver(AbstractResolver):
    """aiohttp's name lookups through the relay's resolver, so that an MTA-STS policy host is found where the
    domain's MX hosts are."""

    def __init__(self, resolver: dns.asyncresolver.Resolver):
        self._resolver = resolver

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        try:
            found = await addresses(self._resolver, host)
        except dns.exception.DNSException as e:
            raise OSError(f"{host}: DNS lookup failed: {e}") from None
        if not found:
            raise OSError(f"{host}: no address")
        return [{"hostname": host, "host": a, "port": port, "proto": 0, "flags": socket.AI_NUMERICHOST,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET} for a in found]

    async def close(self) -> None:
        pass


class PublicOnly(AbstractResolver):
    """Another resolver's answers, keeping only globally routable addresses: a name someone else chose (a
    webhook URL, a domain's MTA-STS or TLS-RPT host) never leads a request to a private, loopback or
    link-local address unless `setting`, the key that allows it, is on."""

    def __init__(self, inner: AbstractResolver, setting: str):
        self._inner = inner
        self._setting = setting

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        found = [r for r in await self._inner.resolve(host, port, family) if ipaddress.ip_address(r["host"]).is_global]
        if not found:
            raise OSError(f"{host} resolves to no public address ({self._setting} is off)")
        return found

    async def close(self) -> None:
        await self._inner.close()


def https_connector(resolver: dns.asyncresolver.Resolver, delivery: Delivery) -> aiohttp.TCPConnector:
    """HTTPS as delivery makes it (MTA-STS policies, TLS-RPT reports): hosts found by the relay's resolver,
    certificates verified against `delivery.tls_ca_file` (else the system's CAs), private addresses only with
    `delivery.https_private_hosts`."""
    ca = delivery.tls_ca_file
    names: AbstractResolver = DnsResolver(resolver)
    if not delivery.https_private_hosts:
        names = PublicOnly(names, "delivery.https_private_hosts")
    return aiohttp.TCPConnector(resolver=names, limit=20, ssl=ssl.create_default_context(cafile=str(ca) if ca else None))
