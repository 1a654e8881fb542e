"""Delivery through real MX lookups: a DNS server on loopback answers, a sink on 127.0.0.1:25 receives."""
from __future__ import annotations

import socket

import dns.asyncresolver
import pytest

from policy import suppression
from tests.conftest import Sink, SinkController
from tests.test_delivery import submit, wait_states
from tests.test_routing import ZONE, dns_server  # noqa: F401  (the fixture)


@pytest.fixture
def port25_sink():
    """MX delivery always uses port 25; skipped, saying why, where 127.0.0.1:25 cannot be had."""
    try:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", 25))
    except OSError as e:
        pytest.skip(f"127.0.0.1:25 is not available for the MX sink ({e.strerror})")
    handler = Sink()
    controller = SinkController(handler, hostname="127.0.0.1", port=25)
    controller.start()
    yield handler
    controller.stop()


@pytest.fixture
def relay_with_dns(relay_factory, dns_server, monkeypatch):  # noqa: F811
    # the MX host's address comes from the system resolver (getaddrinfo), as for every outbound connection
    monkeypatch.setitem(ZONE, "mx-e2e.test.", [(300, "MX", "10 localhost.")])
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], dns_server.port, 1.0
    relay = relay_factory(roles=("submission", "delivery"), resolver=resolver,
                          delivery={"retry_schedule": (60.0,), "command_timeout": 2.0})
    relay.add_tenant()
    return relay


def test_mx_lookup_leads_to_the_sink(relay_with_dns, port25_sink, dns_server):  # noqa: F811
    wait_states(relay_with_dns, submit(relay_with_dns, ("you@mx-e2e.test",)), {"delivered"})
    assert [r for _, r, _ in port25_sink.received] == [["you@mx-e2e.test"]]
    assert ("mx-e2e.test.", "MX") in dns_server.queries


@pytest.mark.parametrize("recipient,state,reply", [
    ("you@nullmx.test", "failed", "550 5.1.10 "),
    ("you@nowhere.test", "failed", "550 5.1.2 "),
    ("you@servfail.test", "deferred", "451 4.4.3 "),
])
def test_dns_outcomes_become_recipient_states(relay_with_dns, recipient, state, reply):
    ((_, got, text),) = wait_states(relay_with_dns, submit(relay_with_dns, (recipient,)), {state})
    assert text.startswith(reply)
    hard = suppression.find(relay_with_dns.store, "acme", recipient)
    assert (hard is not None and hard.cause == "hard_bounce") == (state == "failed")
