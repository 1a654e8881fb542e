"""Security as an attacker meets it, over real SMTP: never an open relay, no user enumeration by timing,
and tenants isolated from each other."""
from __future__ import annotations

import asyncio
import base64
import socket
import statistics
import time

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings, strategies as st

from policy import suppression
from policy.smtp import SaferSMTP
from tests.conftest import PASSWORD, message
from tests.test_inbound_addresses import RELAY_TRICKS, TOKEN
from tests.test_inbound import delivered_token, inbound, reply

ROLES = ("submission", "delivery", "inbound")
# Tricks on the wire, beyond the addresses: envelope and command injection, relaying by other verbs.
WIRE_TRICKS = [
    f"bounce+{TOKEN}@bounces.websofttt.com>\r\nRCPT TO:<victim@example.org",   # CR/LF injection
    "unsubscribe@websofttt.com> NOTIFY=SUCCESS ORCPT=rfc822;victim@example.org",
    "@relay.websofttt.com:victim@example.org",                                   # source route
    "victim%example.org@bounces.websofttt.com",
    "\"victim@example.org\"@websofttt.com",                                      # quoted local part
]


class Raw:
    """An SMTP client on a raw socket: sends exactly the bytes given, reads whole replies."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.read()

    def read(self) -> str:
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return "\n".join(lines) or "(closed)"
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    def command(self, line: str) -> list[str]:
        """Send one line (which may smuggle more after a CR LF); return one reply per command sent."""
        self.sock.sendall(line.encode("utf-8", "surrogateescape") + b"\r\n")
        return [self.read() for _ in range(line.count("\r\n") + 1)]


@pytest.fixture
def relay(relay_factory, sink):
    relay = relay_factory(roles=ROLES, delivery={"routes": {"example.net": ("127.0.0.1", sink.port),
                                                            "example.org": ("127.0.0.1", sink.port)}},
                          auth_failures=1000)
    relay.add_tenant()
    relay.add_tenant("beta", username="app2")
    return relay


# Spellings that the SMTP parser (aiosmtpd, RFC 5321) reads as one of our own role addresses: a quoted
# plain atom is the same local part, a source route is ignored (4.1.1.3), spaces around are dropped.
# Accepting them delivers to our role address, which relays nothing.
SAME_MAILBOX = {'"unsubscribe"@websofttt.com', '"postmaster"@websofttt.com', "@websofttt.com:unsubscribe@websofttt.com",
                "unsubscribe @websofttt.com", " unsubscribe@websofttt.com", "unsubscribe@websofttt.com "}
TRICKS = [t for t in RELAY_TRICKS if t and "\x00" not in t and t not in SAME_MAILBOX] + WIRE_TRICKS


def test_the_inbound_listener_relays_nothing(relay, sink):
    client = Raw(relay.ports["inbound"][0])
    client.command("EHLO attacker.example")
    refused = 0
    for trick in TRICKS:
        assert client.command("MAIL FROM:<attacker@example.org>")[0].startswith("250")
        replies = client.command(f"RCPT TO:<{trick}>")
        assert replies[-1][:1] in "45", (trick, replies)     # a smuggled command is refused on its own
        refused += 1
        client.command("RSET")
    assert refused >= 15
    assert client.command("DATA")[0][:3] in ("503", "554")          # no recipient: no transaction
    assert sink.received == []


def test_unauthenticated_submission_relays_nothing(relay, sink):
    attempts = [f"RCPT TO:<{t}>" for t in TRICKS[:10]] + [
        "MAIL FROM:<app@example.com>", "MAIL FROM:<>", "MAIL FROM:<postmaster@websofttt.com>",
        "XCLIENT ADDR=10.0.0.1", "XFORWARD ADDR=10.0.0.1", "AUTH PLAIN " + base64.b64encode(
            f"\0app1\0{PASSWORD}".encode()).decode(),                          # right password, but no TLS
        "DATA", "BDAT 10 LAST", "ETRN example.org", "TURN", "VRFY app1", "EXPN abuse"]
    for line in attempts:                    # a fresh session each: aiosmtpd hangs up after 5 unknown verbs
        client = Raw(relay.port)
        client.command("EHLO attacker.example")
        replies = client.command(line)
        client.sock.close()
        assert all(r[:1] in "45" or r.startswith("252") for r in replies), (line, replies)
    assert len(attempts) >= 15
    assert relay.spool_rows("SELECT count(*) FROM messages") == [(0,)] and sink.received == []


def _auth_seconds(relay, user: str) -> float:
    client = relay.connect(login=None)
    blob = base64.b64encode(f"\0{user}\0wrong-{PASSWORD}".encode()).decode()
    started = time.perf_counter()
    code, _ = client.docmd("AUTH", "PLAIN " + blob)
    elapsed = time.perf_counter() - started
    assert code == 535
    client.close()
    return elapsed


@pytest.mark.serial          # password checks run niced: a busy test beside it slows the real ones, not the rest
def test_reply_time_does_not_tell_whether_a_user_exists(relay):
    known, unknown = [], []
    for _ in range(8):
        known.append(_auth_seconds(relay, "app1"))
        unknown.append(_auth_seconds(relay, "nobody-here"))
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.7 < ratio < 1.4, (known, unknown)
    assert min(known + unknown) > 0.02                  # a real scrypt check ran each time


def test_tenants_are_isolated(relay, sink):
    a = relay.connect(login=("app1", PASSWORD))
    a.mail("app@example.com")
    a.rcpt("you@example.net")
    code, text = a.data(message(sender="Beta <news@beta.example>"))
    assert code == 550 and text.startswith(b"5.7.1"), text      # A may not send From B's domains
    token = delivered_token(relay, sink, "shared@example.net")  # A's copy to a recipient B also mails
    with inbound(relay) as mx:
        mx.sendmail("shared@example.net", [f"unsubscribe+{token}@websofttt.com"], reply("x"))
    deadline = time.monotonic() + 10
    while suppression.find(relay.store, "acme", "shared@example.net") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert suppression.find(relay.store, "acme", "shared@example.net").scope == "acme"
    assert suppression.find(relay.store, "beta", "shared@example.net") is None     # A's token never touches B
    b = relay.connect(login=("app2", PASSWORD))
    b.mail("app@example.com")
    assert b.rcpt("shared@example.net")[0] == 250


@pytest.mark.parametrize("listener", ["submission", "inbound"])
def test_malformed_input_gets_a_clean_reply_with_an_enhanced_code(relay, listener):
    client = Raw(relay.port if listener == "submission" else relay.ports["inbound"][0])
    client.command("EHLO attacker.example")
    assert client.command("MAIL FROM:<a@")[0].startswith("553 5.1.3")   # was an IndexError's name
    echoed = client.command("\x1b[31mX\x07 hello")[0]
    assert echoed.startswith("500 5.5.2") and "\x1b" not in echoed and "\x07" not in echoed
    assert client.command("RCPT TO:<x@example.org>")[0].startswith("503 5.5.1")
    assert client.command("NOOP")[0].startswith("250")                 # still serving


def test_clean_reply():
    from policy.smtp import INTERNAL_ERROR, clean_reply
    assert clean_reply("503 Error: need MAIL command") == "503 5.5.1 Error: need MAIL command"
    assert clean_reply("550 5.7.1 already coded") == "550 5.7.1 already coded"
    assert clean_reply("250 OK") == "250 2.0.0 OK"                       # RFC 2034: 2xx too
    assert clean_reply("250 queued as x") == "250 queued as x"        # ours, given as they are
    assert clean_reply("500 Error: (IndexError) string index out of range") == INTERNAL_ERROR
    assert clean_reply('500 Error: command "\rX" not recognized') == '500 5.5.2 Error: command "?X" not recognized'
    assert clean_reply("501 Syntax: \udcff") == "501 5.5.4 Syntax: \\udcff"      # invalid UTF-8 from the client


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab.-_+<>@[]\" \\(),:;!#=", max_size=24))
@example("<a@b.c> SIZE=10")
@example("<a..b@c>")
@example(" <a@b>")
@example("<.a@b>")
@example("<a@b->")
def test_the_plain_path_fast_path_says_what_the_stdlib_parser_says(arg):
    smtp = SaferSMTP(object(), loop=asyncio.new_event_loop())
    try:
        stdlib = SMTP._getaddr(smtp, arg)
    except (IndexError, ValueError, TypeError, AttributeError):
        stdlib = (None, None)
    assert smtp._getaddr(arg) == stdlib


def test_sessions_find_the_same_commands_and_mechanisms_as_full_introspection():
    from inbound.server import InboundHandler
    from relay.submission import SubmissionHandler, SubmissionSMTP

    class Authenticator:
        async def check(self, *_):
            raise AssertionError("not called")

    loop = asyncio.new_event_loop()
    handler = type("Handler", (), {"refusals": {}, "authenticator": Authenticator()})()
    smtp = SubmissionSMTP(handler, sessions=None, loop=loop)
    full = {name[5:] for name in object.__dir__(smtp) if name.startswith("smtp_")}
    assert set(smtp._smtp_methods) == full and "STARTTLS" in full and "AUTH" in full
    assert set(smtp._auth_methods) == {"LOGIN", "PLAIN"}
    loop.close()
    for cls in (SubmissionHandler, InboundHandler):
        hooks = {name for name in object.__dir__(cls.__new__(cls)) if name.startswith("handle_")}
        assert set(dir(cls.__new__(cls))) == hooks and "handle_DATA" in hooks


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="aZ09.-_+'=@[]\"\\ ", max_size=30))
@example("a.b@c-d.example")
@example("a@b")
@example("a..b@c")
def test_the_plain_address_fast_path_accepts_only_what_flanker_accepts(address):
    from flanker.addresslib import address as flanker_address
    from policy.smtp import valid_address
    assert valid_address(address) == (flanker_address.parse(address, addr_spec_only=True, strict=True) is not None)
