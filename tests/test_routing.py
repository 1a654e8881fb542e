"""Routing against a real authoritative DNS server on loopback (dnspython's own wire format, no mocks)."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import dns.asyncresolver
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from policy.settings import Delivery
from relay import eventloop
from relay.routing import Destination, RouteError, Router

# name -> [(ttl, type, rdata)]; the 20 record comes first so the router has to sort
ZONE: dict[str, list[tuple[int, str, str]]] = {
    "example.com.": [(300, "MX", "20 backup.example.com."), (300, "MX", "10 mx1.example.com."),
                     (300, "MX", "10 mx2.example.com.")],
    "alias.test.": [(30, "CNAME", "example.com.")],
    "implicit.test.": [(300, "A", "192.0.2.10")],
    "implicit6.test.": [(300, "AAAA", "2001:db8::10")],
    "noaddress.test.": [(300, "TXT", '"v=spf1 -all"')],
    "nullmx.test.": [(86400, "MX", "0 .")],
}
SERVFAIL = {"servfail.test."}
SILENT = {"timeout.test."}  # never answered
# negative answers carry an SOA whose minimum (3600) exceeds the router's 5-minute cap
SOA = dns.rrset.from_text("test.", 3600, "IN", "SOA", "ns.test. hostmaster.test. 1 3600 600 86400 3600")


class ZoneServer(asyncio.DatagramProtocol):
    """A tiny authoritative UDP server answering from ZONE and counting the queries it gets."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, str]] = []
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text().lower()
        self.queries.append((name, dns.rdatatype.to_text(question.rdtype)))
        if name in SILENT:
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in SERVFAIL:
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            self._answer(response, name, question.rdtype)
        self.transport.sendto(response.to_wire(), addr)  # type: ignore[attr-defined]

    def _answer(self, response: dns.message.Message, name: str, rdtype: int) -> None:
        while name in ZONE:
            records = ZONE[name]
            cname = [r for r in records if r[1] == "CNAME"]
            if cname and rdtype != dns.rdatatype.CNAME:
                response.answer.append(dns.rrset.from_text(name, cname[0][0], "IN", "CNAME", cname[0][2]))
                name = cname[0][2].lower()
                continue
            wanted = [r for r in records if dns.rdatatype.from_text(r[1]) == rdtype]
            if wanted:
                response.answer.append(dns.rrset.from_text_list(
                    name, min(r[0] for r in wanted), "IN", rdtype, [r[2] for r in wanted]))
            else:
                response.authority.append(SOA)  # NODATA
            return
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(SOA)

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.queries if n == name.lower().rstrip(".") + ".")


@pytest.fixture
def dns_server() -> Iterator[ZoneServer]:
    """The server runs on its own event loop in a thread, so it answers whatever the test's loop does."""
    loop = asyncio.new_event_loop()
    server = ZoneServer()
    transport, _ = loop.run_until_complete(
        loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0)))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))  # let the transport close its socket
    loop.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_router(server: ZoneServer, delivery: Delivery = Delivery(), clock: FakeClock | None = None,
                **kwargs) -> Router:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port
    resolver.lifetime = 0.5
    return Router(delivery, resolver, clock or FakeClock(), **kwargs)


def route(router: Router, domain: str) -> list[Destination]:
    return eventloop.run(router.route(domain))


def route_error(router: Router, domain: str) -> RouteError:
    with pytest.raises(RouteError) as info:
        route(router, domain)
    return info.value


def test_mx_sorted_by_preference_with_equal_preferences_shuffled(dns_server):
    router = make_router(dns_server)
    orders = set()
    for _ in range(200):
        destinations = route(router, "example.com")
        assert all(d.port == 25 and not d.tls_required for d in destinations)
        hosts = [d.host for d in destinations]
        assert sorted(hosts[:2]) == ["mx1.example.com", "mx2.example.com"]
        assert hosts[2] == "backup.example.com"
        orders.add(tuple(hosts[:2]))
    assert len(orders) == 2  # both orders of the preference-10 pair (chance of a false failure: 2**-199)


def test_implicit_mx_uses_the_domain_when_it_has_an_address(dns_server):
    router = make_router(dns_server)
    assert route(router, "implicit.test") == [Destination("implicit.test", 25, mx=True)]
    assert route(router, "implicit6.test") == [Destination("implicit6.test", 25, mx=True)]
    assert ("implicit6.test.", "AAAA") in dns_server.queries


def test_no_mx_and_no_address_is_permanent(dns_server):
    error = route_error(make_router(dns_server), "noaddress.test")
    assert (error.permanent, error.status) == (True, "5.1.2")
    assert [t for n, t in dns_server.queries if n == "noaddress.test."] == ["MX", "A", "AAAA"]


def test_null_mx_is_permanent(dns_server):
    error = route_error(make_router(dns_server), "nullmx.test")
    assert (error.permanent, error.status) == (True, "5.1.10")
    assert "null MX" in error.text


def test_nxdomain_is_permanent(dns_server):
    error = route_error(make_router(dns_server), "nowhere.test")
    assert (error.permanent, error.status) == (True, "5.1.2")
    assert "does not exist" in error.text


@pytest.mark.parametrize("domain", ["servfail.test", "timeout.test"])
def test_servfail_and_timeout_are_temporary_and_not_cached(dns_server, domain):
    router = make_router(dns_server)
    started = time.monotonic()
    for attempt in (1, 2):
        error = route_error(router, domain)
        assert (error.permanent, error.status) == (False, "4.4.3")
        assert dns_server.count(domain) >= attempt  # the second attempt asked again
    assert time.monotonic() - started < 3  # the resolver's 0.5 s lifetime bounds each attempt


def test_static_route_beats_mx(dns_server):
    router = make_router(dns_server, Delivery(routes={"example.com": ("127.0.0.1", 2525)}))
    assert route(router, "Example.COM.") == [Destination("127.0.0.1", 2525)]
    assert dns_server.count("example.com") == 0
    assert route(router, "implicit.test") == [Destination("implicit.test", 25, mx=True)]  # other domains: MX


def test_smarthost_mode_ignores_dns(dns_server):
    delivery = Delivery(mode="smarthost", smarthost=("smtp.provider.test", 587), smarthost_tls=True,
                        routes={"example.com": ("127.0.0.1", 2525)})
    router = make_router(dns_server, delivery)
    assert route(router, "implicit.test") == [Destination("smtp.provider.test", 587, tls_required=True)]
    assert route(router, "[192.0.2.1]") == [Destination("smtp.provider.test", 587, tls_required=True)]
    assert route(router, "example.com") == [Destination("127.0.0.1", 2525)]  # static routes still first
    assert dns_server.queries == []
    # built with no resolver at all: smarthost nodes need no DNS configuration; TLS is off by default
    plain = Router(Delivery(mode="smarthost", smarthost=("smtp.provider.test", 587)))
    assert route(plain, "example.com") == [Destination("smtp.provider.test", 587, tls_required=False)]


def test_smarthost_mode_without_smarthost_is_refused():
    with pytest.raises(ValueError):
        Router(Delivery(mode="smarthost"))


def test_positive_answers_are_cached_for_their_ttl(dns_server):
    clock = FakeClock()
    router = make_router(dns_server, clock=clock)
    route(router, "example.com")
    route(router, "EXAMPLE.com.")  # same cache entry
    clock.now += 299
    assert len(route(router, "example.com")) == 3
    assert dns_server.count("example.com") == 1
    clock.now += 2
    route(router, "example.com")
    assert dns_server.count("example.com") == 2


def test_cache_uses_the_minimum_ttl_of_the_answer(dns_server):
    clock = FakeClock()
    router = make_router(dns_server, clock=clock)
    assert len(route(router, "alias.test")) == 3  # CNAME (TTL 30) to example.com (MX TTL 300)
    clock.now += 29
    route(router, "alias.test")
    assert dns_server.count("alias.test") == 1
    clock.now += 2
    route(router, "alias.test")
    assert dns_server.count("alias.test") == 2


def test_expired_entries_are_dropped(dns_server):
    clock = FakeClock()
    router = make_router(dns_server, clock=clock)
    route(router, "example.com")
    route_error(router, "nowhere.test")
    assert len(router._cache) == 2
    clock.now += 301
    route(router, "implicit.test")  # a later lookup sweeps the two expired entries
    assert list(router._cache) == ["implicit.test"]


@pytest.mark.parametrize("domain", ["nowhere.test", "nullmx.test"])
def test_permanent_failures_are_cached_for_at_most_five_minutes(dns_server, domain):
    clock = FakeClock()
    router = make_router(dns_server, clock=clock)
    route_error(router, domain)
    clock.now += 299
    assert route_error(router, domain).permanent
    assert dns_server.count(domain) == 1
    clock.now += 2  # the SOA minimum (3600) or the MX TTL (86400) would allow far longer
    route_error(router, domain)
    assert dns_server.count(domain) == 2


def test_concurrent_lookups_share_one_query(dns_server):
    router = make_router(dns_server)

    async def many(domain: str) -> list:
        return await asyncio.gather(*(router.route(domain) for _ in range(20)), return_exceptions=True)

    results = eventloop.run(many("example.com"))
    assert all(len(r) == 3 for r in results)
    assert dns_server.count("example.com") == 1
    failures = eventloop.run(many("servfail.test"))
    assert all(isinstance(f, RouteError) and f.status == "4.4.3" for f in failures)
    assert dns_server.count("servfail.test") == 1


def test_address_literals_need_no_dns(dns_server):
    router = make_router(dns_server)
    assert route(router, "[192.0.2.1]") == [Destination("192.0.2.1", 25)]
    assert route(router, "[IPv6:2001:DB8::1]") == [Destination("2001:db8::1", 25)]
    for bad in ("[not-an-ip]", "[2001:db8::1]", "[IPv6:192.0.2.1]", "[192.0.2.1"):
        error = route_error(router, bad)
        assert (error.permanent, error.status) == (True, "5.1.2"), bad
    assert dns_server.queries == []


def test_malformed_domain_is_permanent_without_a_query(dns_server):
    error = route_error(make_router(dns_server), "a..example.com")
    assert (error.permanent, error.status) == (True, "5.1.2")
    assert dns_server.queries == []
