"""SMTP as standards-minded clients read it: what EHLO offers on each listener, pipelining through
STARTTLS + AUTH, an enhanced status code on every reply, the AUTH LOGIN prompts, and precise answers
to what the relay does not offer (BDAT, DSN parameters), each refusal logged and counted."""
from __future__ import annotations

import base64
import logging
import shutil
import smtplib
import socket
import subprocess

import pytest
from prometheus_client import REGISTRY

from tests.conftest import PASSWORD, message

ENHANCED = ("250-PIPELINING", "250-ENHANCEDSTATUSCODES")


@pytest.fixture
def relay(relay_factory):
    r = relay_factory(roles=("submission", "inbound"), max_message_size=10_000)
    r.add_tenant()
    return r


def extensions(client: smtplib.SMTP) -> set[str]:
    client.ehlo("client.example")
    return set(client.esmtp_features)


def test_ehlo_offers_pipelining_and_enhanced_status_codes_on_every_listener(relay):
    starttls = smtplib.SMTP("127.0.0.1", relay.port, timeout=10)
    starttls.starttls(context=relay.client_context())
    implicit = smtplib.SMTP_SSL("127.0.0.1", relay.tls_port, timeout=10, context=relay.client_context())
    inbound = smtplib.SMTP("127.0.0.1", relay.ports["inbound"][0], timeout=10)
    for client in (starttls, implicit, inbound):
        assert {"pipelining", "enhancedstatuscodes", "8bitmime", "smtputf8", "size"} <= extensions(client)
        assert "chunking" not in client.esmtp_features and "dsn" not in client.esmtp_features
        client.quit()


class Wire:
    """A client that writes exactly what the test says and reads replies as they come."""

    def __init__(self, relay):
        self.sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
        self.buffer = b""
        assert self.reply().startswith("220 ")
        self.send(b"EHLO client.example\r\n")
        self.reply()
        self.send(b"STARTTLS\r\n")
        assert self.reply() == "220 2.0.0 Ready to start TLS"
        self.sock = relay.client_context().wrap_socket(self.sock, server_hostname="localhost")
        self.send(b"EHLO client.example\r\n")
        self.ehlo = self.reply()
        login = base64.b64encode(f"\0app1\0{PASSWORD}".encode())
        self.send(b"AUTH PLAIN " + login + b"\r\n")
        assert self.reply() == "235 2.7.0 Authentication successful"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One whole reply, its lines joined by newlines."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                assert chunk, f"connection closed after {lines}"
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] != b"-":
                return "\n".join(lines)


def test_mail_rcpt_rcpt_data_pipelined_in_one_write_through_starttls_and_auth(relay):
    wire = Wire(relay)
    assert "250-PIPELINING" in wire.ehlo.splitlines()
    wire.send(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<one@example.net>\r\nRCPT TO:<two@example.net>\r\nDATA\r\n")
    assert [wire.reply() for _ in range(4)] == ["250 2.1.0 Sender OK", "250 2.1.5 Recipient OK",
                                                "250 2.1.5 Recipient OK", "354 End data with <CR><LF>.<CR><LF>"]
    wire.send(message() + b".\r\nQUIT\r\n")
    queued, bye = wire.reply(), wire.reply()
    assert queued.startswith("250 2.0.0 queued as ") and bye == "221 2.0.0 Bye"
    queue_id = queued.split()[-1]
    assert sorted(r for (r,) in relay.spool_rows("SELECT recipient FROM recipients WHERE queue_id = ?",
                                                 (queue_id,))) == ["one@example.net", "two@example.net"]


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (.ci/run installs it)")
def test_swaks_pipelines_through_starttls_and_auth(relay):
    """swaks --pipeline pipelines only where EHLO offers PIPELINING (else it sends one command at a time)."""
    out = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(relay.port), "--tls", "--tls-verify",
                          "--tls-ca-path", str(relay.settings.tls_cert), "--tls-sni", "localhost",
                          "--auth", "PLAIN", "--auth-user", "app1", "--auth-password", PASSWORD, "--pipeline",
                          "--from", "app@example.com", "--to", "you@example.net", "--header", "Subject: hello"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    words = [line.split()[:2] for line in out.stdout.splitlines()]
    transcript = " ".join(w[1] for w in words if len(w) == 2 and w[0] in ("~>", "<~"))
    assert "MAIL RCPT DATA 250" in transcript       # written together, before the first of their replies
    assert " 250 2.0.0 queued as " in out.stdout


def test_every_reply_but_the_greeting_and_ehlo_carries_an_enhanced_status_code(relay):
    wire = Wire(relay)
    for command in (b"NOOP", b"RSET", b"HELP", b"VRFY you@example.net", b"MAIL FROM:<app@example.com>",
                    b"RCPT TO:<you@example.net>", b"RSET", b"QUIT"):
        wire.send(command + b"\r\n")
        reply = wire.reply()
        assert reply[:3].isdigit() and reply[4:5] == reply[0] and reply[5:6] == ".", (command, reply)


def test_auth_login_prompts_are_username_and_password(relay):
    client = relay.connect(login=None)
    code, challenge = client.docmd("AUTH", "LOGIN")
    assert (code, base64.b64decode(challenge)) == (334, b"Username:")
    code, challenge = client.docmd(base64.b64encode(b"app1").decode())
    assert (code, base64.b64decode(challenge)) == (334, b"Password:")
    assert client.docmd(base64.b64encode(PASSWORD.encode()).decode()) == (235, b"2.7.0 Authentication successful")


def test_a_login_leaves_no_deprecation_warning_in_the_log(relay, caplog):
    caplog.set_level(logging.DEBUG)
    relay.connect().quit()
    assert caplog.records and not [r for r in caplog.records if "deprecated" in r.getMessage()]


def test_bdat_is_refused_with_a_pointer_to_data(relay):
    client = relay.connect()
    client.mail("app@example.com")
    client.rcpt("you@example.net")
    assert client.docmd("BDAT", "10 LAST") == (502, b"5.5.1 BDAT (CHUNKING) is not offered here: use DATA")


def rejected(stage: str, reason: str) -> float:
    return REGISTRY.get_sample_value("websofttt_messages_rejected_total", {"stage": stage, "reason": reason}) or 0.0


def refusal_events(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "rejected"]


def test_dsn_parameters_are_refused_saying_why_logged_and_counted(relay, caplog):
    caplog.set_level(logging.INFO, logger="websofttt.events")
    before = rejected("mail", "parameter"), rejected("rcpt", "parameter")
    client = relay.connect()
    code, text = client.docmd("MAIL", "FROM:<app@example.com> RET=HDRS ENVID=x1")
    assert code == 555 and text.startswith(b"5.5.4 MAIL FROM takes SIZE, BODY and SMTPUTF8 only; RET and ENVID: no DSN")
    client.mail("app@example.com")
    code, text = client.docmd("RCPT", "TO:<you@example.net> NOTIFY=NEVER")
    assert code == 555 and text.startswith(b"5.5.4 RCPT TO takes no parameters; NOTIFY and ORCPT: no DSN")
    assert (rejected("mail", "parameter"), rejected("rcpt", "parameter")) == (before[0] + 1, before[1] + 1)
    assert [(e["stage"], e["reason"], e["tenant"]) for e in refusal_events(caplog)] == [
        ("mail", "parameter", "acme"), ("rcpt", "parameter", "acme")]


def test_size_refusals_at_mail_and_after_data_are_logged_and_counted(relay, caplog):
    caplog.set_level(logging.INFO, logger="websofttt.events")
    before = rejected("mail", "too_big"), rejected("data", "too_big")
    client = relay.connect()
    assert client.docmd("MAIL", "FROM:<app@example.com> SIZE=20000") == (
        552, b"5.3.4 Message exceeds the maximum size of 10000 bytes")
    client.mail("app@example.com")
    client.rcpt("you@example.net")
    assert client.data(message(body="x" * 70 + "\r\n") * 200) == (
        552, b"5.3.4 Message exceeds the maximum size of 10000 bytes")
    assert (rejected("mail", "too_big"), rejected("data", "too_big")) == (before[0] + 1, before[1] + 1)
    assert [(e["stage"], e["reason"], e["tenant"]) for e in refusal_events(caplog)] == [
        ("mail", "too_big", "acme"), ("data", "too_big", "acme")]
