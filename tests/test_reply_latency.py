"""No reply waits on Nagle's algorithm: a multi-line EHLO answer arrives in well under the ~40 ms of a
delayed ACK, on every listener (submission after STARTTLS, implicit TLS, inbound)."""
from __future__ import annotations

import smtplib
import socket
import statistics
import time

import pytest

ROLES = ("submission", "inbound")
LIMIT = 0.015        # a delayed ACK costs 40 ms on Linux; a loopback reply takes well under 1 ms
pytestmark = pytest.mark.serial     # reply times: tests beside it (make test runs them in parallel) skew them


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


def test_a_multi_line_reply_arrives_in_one_segment(relay):
    """EHLO's lines are written together: the first read gets them all (written line by line, with
    TCP_NODELAY, the first read gets the first line), and each line is a proper reply line."""
    with socket.create_connection(("127.0.0.1", relay.ports["inbound"][0]), timeout=10) as sock:
        assert sock.recv(1000).startswith(b"220 ")
        for _ in range(5):
            sock.sendall(b"EHLO client.example\r\n")
            lines = sock.recv(65536).split(b"\r\n")
            assert lines[-1] == b"" and len(lines) > 4
            assert all(line[3:4] == b"-" for line in lines[:-2]) and lines[-2].startswith(b"250 ")
