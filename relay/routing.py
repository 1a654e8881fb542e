"""Where a recipient domain's mail goes: static route, smarthost, or the domain's MX hosts.

Delivery asks for every due recipient, so MX answers are cached for their DNS TTL and concurrent
lookups of one domain share a single query. Failures carry an enhanced status code and say whether
retrying can help: a domain that does not exist is bounced now, a DNS outage is retried later.

Lookups go to `[dns] nameservers` when set (relay/resolver.py), the MX hosts' addresses included (they are
looked up with the MX answer and cached with it); otherwise to the system's resolver, and the connection
looks the MX host up itself. Each destination says whether the MX answer was DNSSEC-secure (DANE needs it).
"""
from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.resolver

from policy.settings import Delivery, Dns
from relay import resolver as relay_dns

NEGATIVE_TTL = 300.0  # permanent failures are remembered at most this long, whatever the SOA says

# (preference, host, its addresses: () when the connection looks the host up); shuffled on every route() call
Records = tuple[tuple[int, str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class MxAnswer:
    records: Records
    secure: bool                     # the MX RRset validated (DNSSEC, relay/resolver.py)


@dataclass(frozen=True)
class TlsPolicy:
    """What a next hop's TLS must prove, from the recipient domain's MTA-STS policy or the MX host's TLSA
    records (relay/transport.py). Two policies that ask the same proof are equal whatever domain they come
    from, so a connection that gave it is reused for every domain sharing the MX host (as Workspace domains
    share Google's)."""
    kind: str                        # "mta-sts" | "dane"
    domain: str = field(compare=False)    # the policy domain: the recipient domain (for reports)
    enforce: bool = True             # False (MTA-STS "testing"): deliver anyway, report the failure
    tlsa: tuple[tuple[int, int, int, bytes], ...] = ()     # DANE: the usable (usage, selector, matching type, data)
    # the policy as TLS-RPT reports it: the MTA-STS policy's lines or TLSA records
    text: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Destination:
    host: str  # hostname or IP to connect to; the name a certificate is checked against
    port: int
    tls_required: bool = False       # STARTTLS with a verified certificate, or no delivery
    auth: tuple[str, str] | None = None   # (username, password) for a smarthost that wants AUTH
    address: str | None = None       # where to connect, when the relay's own resolver looked the host up
    mx: bool = False                 # one of the domain's MX hosts (not a route or the smarthost)
    mx_secure: bool = False          # ... from a DNSSEC-secure MX answer
    tls_policy: TlsPolicy | None = None     # set per recipient domain by relay/transport.py


class RouteError(Exception):
    """No destination: `permanent` True → bounce now; False → retry later.

    `status` is the enhanced status code and `text` what to record.
    """

    def __init__(self, permanent: bool, status: str, text: str):
        super().__init__(f"{status} {text}")
        self.permanent = permanent
        self.status = status
        self.text = text


class Router:
    """Chooses destinations per `[delivery]`; one instance per delivery worker (it holds the cache)."""

    def __init__(self, delivery: Delivery, resolver: dns.asyncresolver.Resolver | None = None,
                 clock: Callable[[], float] = time.monotonic, smarthost_auth: tuple[str, str] | None = None,
                 dns_settings: Dns | None = None):
        self._smarthost: Destination | None = None
        if delivery.mode == "smarthost":
            if delivery.smarthost is None:
                raise ValueError("delivery mode 'smarthost' needs a smarthost (host, port)")
            self._smarthost = Destination(*delivery.smarthost, tls_required=delivery.smarthost_tls,
                                          auth=smarthost_auth)
        self._routes = {_normalize(d): hp for d, hp in delivery.routes.items()}
        self._mx_port = delivery.mx_port
        self._dns = dns_settings or Dns()
        self._resolver = resolver  # created on first lookup: smarthost-only nodes need no resolv.conf
        self._clock = clock
        self._cache: dict[str, tuple[float, MxAnswer | RouteError]] = {}  # domain -> (expiry, outcome)
        self._next_sweep = clock() + NEGATIVE_TTL  # when to drop expired entries
        self._inflight: dict[str, asyncio.Task[MxAnswer | RouteError]] = {}

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        """The worker's resolver (`[dns]`), for the other lookups of delivery too (relay/transport.py)."""
        if self._resolver is None:
            self._resolver = relay_dns.make_resolver(self._dns)
        return self._resolver

    def routed(self, domain: str) -> bool:
        """The domain goes to a static route or the smarthost, not to its MX hosts."""
        return self._smarthost is not None or _normalize(domain) in self._routes

    async def route(self, domain: str) -> list[Destination]:
        """Candidates in the order to try; raises RouteError when there are none."""
        key = _normalize(domain)
        if key in self._routes:
            return [Destination(*self._routes[key])]
        if self._smarthost:
            return [self._smarthost]
        if key.startswith("["):
            return [Destination(_literal(key), self._mx_port)]
        answer = await self._lookup(key)
        records = list(answer.records)
        random.shuffle(records)  # spread load over equal preferences (RFC 5321 §5.1) ...
        records.sort(key=lambda r: r[0])  # ... the sort is stable, so the shuffle survives within a group
        return [Destination(host, self._mx_port, address=address, mx=True, mx_secure=answer.secure)
                for _, host, addresses in records for address in addresses or (None,)]

    async def _lookup(self, domain: str) -> MxAnswer:
        """Cached or shared answer; a fresh RouteError per caller so tracebacks never pile up."""
        cached = self._cache.get(domain)
        if cached and cached[0] > self._clock():
            result = cached[1]
        else:
            task = self._inflight.get(domain)
            if task is None:
                task = self._inflight[domain] = asyncio.create_task(self._fetch(domain))
                task.add_done_callback(lambda _: self._inflight.pop(domain, None))
            result = await asyncio.shield(task)  # one caller cancelled must not cancel the others
        if isinstance(result, RouteError):
            raise RouteError(result.permanent, result.status, result.text)
        return result

    async def _fetch(self, domain: str) -> MxAnswer | RouteError:
        """Resolve and cache in the shared task, so the answer is kept even if every caller went away."""
        ttl, result = await self._resolve(domain)
        now = self._clock()
        if now >= self._next_sweep:  # a long-running worker meets many domains only once
            self._cache = {d: entry for d, entry in self._cache.items() if entry[0] > now}
            self._next_sweep = now + NEGATIVE_TTL
        if ttl > 0:
            self._cache[domain] = (now + ttl, result)
        return result

    async def _resolve(self, domain: str) -> tuple[float, MxAnswer | RouteError]:
        """(seconds to cache, outcome); temporary failures get 0 so the next attempt asks again."""
        try:
            name = dns.name.from_text(domain)
        except dns.exception.DNSException:
            return NEGATIVE_TTL, RouteError(True, "5.1.2", f"{domain} is not a valid domain name")
        try:
            try:
                answer = await self.resolver.resolve(name, "MX")
            except dns.resolver.NoAnswer as e:
                return await self._implicit_mx(name, domain, _negative_ttl(e.response()))
            ttl = answer.chaining_result.minimum_ttl
            hosts = [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer
                     if r.exchange != dns.name.root]
            if not hosts:
                return min(ttl, NEGATIVE_TTL), RouteError(
                    True, "5.1.10", f"{domain} has a null MX (RFC 7505): it accepts no mail")
            return ttl, MxAnswer(await self._addressed(hosts), relay_dns.secure(answer, self._dns))
        except dns.resolver.NXDOMAIN as e:
            return (_negative_ttl(*e.responses().values()),
                    RouteError(True, "5.1.2", f"{domain}: domain does not exist"))
        except dns.exception.DNSException as e:  # SERVFAIL, timeout, no nameservers, no resolv.conf
            return 0, RouteError(False, "4.4.3", f"{domain}: DNS lookup failed: {e}")

    async def _addressed(self, hosts: list[tuple[int, str]]) -> Records:
        """With `[dns] nameservers`, each host's addresses from them (a host with none is left out, as the
        connection would fail); otherwise () and the connection asks the system."""
        if not self._dns.nameservers:
            return tuple((pref, host, ()) for pref, host in hosts)
        found = [(pref, host, tuple(await relay_dns.addresses(self.resolver, host))) for pref, host in hosts]
        return tuple(r for r in found if r[2])

    async def _implicit_mx(self, name: dns.name.Name, domain: str,
                           ttl: float) -> tuple[float, MxAnswer | RouteError]:
        """No MX: the domain itself is the mail host if it has an address (RFC 5321 §5.1)."""
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(name, rdtype)
            except dns.resolver.NoAnswer as e:
                ttl = min(ttl, _negative_ttl(e.response()))
                continue
            # an MX record added later must be noticed: keep this no longer than the MX absence
            addresses = tuple(r.address for r in answer) if self._dns.nameservers else ()
            return (min(ttl, answer.chaining_result.minimum_ttl),
                    MxAnswer(((0, domain, addresses),), relay_dns.secure(answer, self._dns)))
        return min(ttl, NEGATIVE_TTL), RouteError(True, "5.1.2", f"{domain} has no MX, A or AAAA record")


def _normalize(domain: str) -> str:
    return domain.lower().rstrip(".")


def _negative_ttl(*responses: dns.message.QueryMessage) -> float:
    """RFC 2308 negative TTL from the SOA in each response, capped at NEGATIVE_TTL."""
    return min([NEGATIVE_TTL, *(r.resolve_chaining().minimum_ttl for r in responses)])


def _literal(domain: str) -> str:
    """'[192.0.2.1]' or '[IPv6:2001:db8::1]' (RFC 5321 §4.1.3) → the address to connect to."""
    text = domain[1:-1] if domain.endswith("]") else ""
    try:
        if text.startswith("ipv6:"):
            return str(ipaddress.IPv6Address(text[5:]))
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise RouteError(True, "5.1.2", f"{domain} is not a valid address literal") from None
