"""No reply waits on Nagle's algorithm: a multi-line EHLO answer arrives in well under the ~40 ms of a
delayed ACK, on every listener (submission after STARTTLS, implicit TLS, inbound)."""
from __future__ import annotations

import smtplib
import ssl
import statistics
import time

import pytest

ROLES = ("submission", "inbound")
LIMIT = 0.015        # a delayed ACK costs 40 ms on Linux; a loopback reply takes well under 1 ms


def ehlo_median(client: smtplib.SMTP, rounds: int = 15) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        code, _ = client.ehlo("client.example")
        times.append(time.perf_counter() - start)
        assert code == 250
    return statistics.median(times)


@pytest.fixture
def relay(relay_factory):
    r = relay_factory(roles=ROLES)
    r.add_tenant()
    return r


def test_submission_ehlo_after_starttls_is_not_delayed(relay):
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=10)
    client.starttls(context=relay.client_context())
    assert ehlo_median(client) < LIMIT
    client.quit()


def test_implicit_tls_ehlo_is_not_delayed(relay):
    client = smtplib.SMTP_SSL("127.0.0.1", relay.tls_port, timeout=10, context=relay.client_context())
    assert ehlo_median(client) < LIMIT
    client.quit()


def test_inbound_ehlo_is_not_delayed(relay):
    client = smtplib.SMTP("127.0.0.1", relay.ports["inbound"][0], timeout=10)
    assert ehlo_median(client) < LIMIT
    client.quit()
