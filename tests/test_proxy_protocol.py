"""PROXY protocol on the listeners (`proxy_protocol = true`), as nodes behind HAProxy see it: the client
address in the header decides trusted networks, brute-force lockout and per-address limits."""
from __future__ import annotations

import dataclasses
import smtplib
import socket

import pytest

from tests.conftest import PASSWORD, RunningRelay, make_settings, prepare


class ProxiedSMTP(smtplib.SMTP):
    """smtplib behind a balancer: the connection starts with a PROXY v1 line naming `client`."""

    def __init__(self, port: int, client: str):
        self.client = client
        super().__init__("127.0.0.1", port, timeout=10)

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout)
        sock.sendall(f"PROXY TCP4 {self.client} 127.0.0.1 40000 {port}\r\n".encode())
        return sock


@pytest.fixture
def relay(tmp_path):
    settings = make_settings(tmp_path / "var", proxy_protocol=True)
    settings = dataclasses.replace(settings, inbound=dataclasses.replace(
        settings.inbound, proxy_protocol=True, max_connections_per_ip=2))
    prepare(settings)
    relay = RunningRelay(settings, ("submission", "inbound"))
    relay.add_tenant("acme", networks=("198.51.100.0/24",))
    yield relay
    relay.stop()


def test_a_trusted_network_is_recognised_by_the_proxied_address(relay):
    with ProxiedSMTP(relay.port, "198.51.100.7") as c:
        c.ehlo("app.example")
        assert c.mail("app@example.com")[0] == 250
    with ProxiedSMTP(relay.port, "203.0.113.9") as c:          # the same balancer, another client
        c.ehlo("app.example")
        code, text = c.mail("app@example.com")
        assert (code, text[:5]) == (530, b"5.7.0")


def test_a_connection_without_the_header_is_closed(relay):
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtplib.SMTP("127.0.0.1", relay.port, timeout=15)


def test_brute_force_is_counted_per_proxied_client(relay):
    def login(client: str, password: str) -> int:
        with ProxiedSMTP(relay.port, client) as c:
            try:
                c.starttls(context=relay.client_context())      # refused to an address locked out
                c.login("app1", password)
                return 235
            except smtplib.SMTPResponseException as e:
                return e.smtp_code
    attacker = [login("203.0.113.9", f"wrong {i}") for i in range(relay.settings.submission.auth_failures)]
    assert attacker[0] == 535
    assert login("203.0.113.9", PASSWORD) == 454                # that address is locked out ...
    assert login("192.0.2.50", PASSWORD) == 454                 # ... and the username too, whoever asks
    relay.store.reset("auth:user:app1")
    assert login("192.0.2.50", PASSWORD) == 235                 # another client is not locked out by address


def test_inbound_limits_count_the_proxied_client(relay):
    port = relay.ports["inbound"][0]
    held = [ProxiedSMTP(port, "203.0.113.9") for _ in range(2)]
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        ProxiedSMTP(port, "203.0.113.9")
    assert refused.value.smtp_code == 421
    with ProxiedSMTP(port, "203.0.113.10") as other:           # another client through the same balancer
        assert other.noop()[0] == 250
    for c in held:
        c.quit()
