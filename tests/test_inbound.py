"""The inbound listener end to end: a delivered copy's unsubscribe address, replied to over real SMTP."""
from __future__ import annotations

import dataclasses
import json
import re
import smtplib
import sqlite3
import subprocess
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from inbound.actions import Actions
from inbound.classify import classify
from inbound.mailbox import Mailbox, set_aside
from inbound.server import InboundHandler
from policy import suppression
from policy.keys import dkim_public_value, new_dkim_pem
from policy.settings import load_settings
from policy.tokens import TokenKeys
from relay import eventloop
from tests.conftest import PASSWORD, RunningRelay, run_cli
from tests.test_delivery import submit, wait_states

ROLES = ("submission", "delivery", "inbound")


@pytest.fixture
def relay(relay_factory, sink):
    relay = relay_factory(roles=ROLES, delivery={"routes": {"example.net": ("127.0.0.1", sink.port)}},
                          max_recipients=100)
    relay.add_tenant()
    relay.add_tenant("other", username="app2")
    return relay


def inbound(relay) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", relay.ports["inbound"][0], timeout=10)
    client.ehlo("mx.recipient.example")
    return client


def mailbox_rows(relay, timeout: float = 20.0) -> list[tuple]:
    path = relay.settings.data_dir / "inbound" / "test.sqlite"
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT kind, evidence, action, processed FROM inbound ORDER BY received").fetchall()
        if (rows and all(r[3] for r in rows)) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def delivered_token(relay, sink, recipient="you@example.net") -> str:
    wait_states(relay, submit(relay, (recipient,)), {"delivered"})
    data = [d for _, rcpts, d in sink.received if rcpts == [recipient]][-1]
    return re.search(rb"<mailto:unsubscribe\+([a-z2-7]+)@websofttt\.com\?subject=unsubscribe>", data).group(1).decode()


def reply(to: str, subject: str = "Re: hello", extra: str = "", body: str = "Please stop.\r\n",
          sender: str = "you@example.net") -> bytes:
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <r{time.time()}@example.net>\r\n"
            f"{extra}\r\n{body}").encode()


def rcpt_reply(relay, tenant_user: str, recipient: str) -> tuple[int, bytes]:
    client = relay.connect(login=(tenant_user, PASSWORD))
    client.mail("app@example.com")
    return client.rcpt(recipient)


def test_reply_to_the_unsubscribe_address_stops_that_tenant_only(relay, sink):
    token = delivered_token(relay, sink)
    address = f"unsubscribe+{token.upper()}@websofttt.com"            # case changed on the way: still valid
    assert inbound(relay).sendmail("you@example.net", [address], reply(address)) == {}
    (kind, _, action, _), = mailbox_rows(relay)
    assert (kind, action) == ("unsubscribe", "unsubscribed y***@example.net from tenant acme")
    code, text = rcpt_reply(relay, "app1", "you@example.net")
    assert (code, text) == (550, b"5.7.1 Recipient <you@example.net> has unsubscribed from this sender")
    assert rcpt_reply(relay, "app2", "you@example.net")[0] == 250       # another tenant is unaffected


def test_tampered_token_suppresses_nothing(relay, sink):
    token = delivered_token(relay, sink)
    forged = token[:-1] + ("a" if token[-1] != "a" else "b")
    address = f"unsubscribe+{forged}@websofttt.com"
    inbound(relay).sendmail("you@example.net", [address], reply(address))
    (kind, _, action, _), = mailbox_rows(relay)
    assert kind == "unsubscribe" and action.startswith("token rejected")
    assert suppression.find(relay.store, "acme", "you@example.net") is None


def test_auto_reply_to_the_unsubscribe_address_is_not_an_unsubscribe(relay, sink):
    token = delivered_token(relay, sink)
    address = f"unsubscribe+{token}@websofttt.com"
    inbound(relay).sendmail("you@example.net", [address],
                            reply(address, "Automatic reply: hello", "Auto-Submitted: auto-replied\r\n"))
    (kind, _, action, _), = mailbox_rows(relay)
    assert (kind, action) == ("auto_reply", "recorded")
    assert suppression.find(relay.store, "acme", "you@example.net") is None


def test_plain_unsubscribe_address_matched_by_in_reply_to(relay, sink):
    wait_states(relay, submit(relay, ("you@example.net",), extra="Message-ID: <campaign-1@example.com>\r\n"),
                {"delivered"})
    inbound(relay).sendmail("you@example.net", ["unsubscribe@websofttt.com"],
                            reply("unsubscribe@websofttt.com", extra="In-Reply-To: <campaign-1@example.com>\r\n"))
    (kind, _, action, _), = mailbox_rows(relay)
    assert action == "unsubscribed y***@example.net from tenant acme (In-Reply-To)"


def test_plain_unsubscribe_needs_a_dkim_verified_from(relay, sink):
    delivered_token(relay, sink)
    unsigned = reply("unsubscribe@websofttt.com")
    inbound(relay).sendmail("you@example.net", ["unsubscribe@websofttt.com"], unsigned)
    assert mailbox_rows(relay)[0][2] == "unverified (no valid DKIM signature for the From domain), not acted on"
    assert suppression.find(relay.store, "acme", "you@example.net") is None


def test_plain_unsubscribe_with_verified_dkim_suppresses_for_tenants_that_mailed(relay_factory, sink):
    pem = new_dkim_pem()
    signed = reply("unsubscribe@websofttt.com")
    signed = dkim.sign(signed, b"k1", b"example.net", pem, include_headers=[b"from", b"to", b"subject"]) + signed
    relay = relay_factory(roles=("submission", "delivery"),
                          delivery={"routes": {"example.net": ("127.0.0.1", sink.port)}})
    relay.add_tenant()
    delivered_token(relay, sink)
    public = dkim_public_value(load_pem_private_key(pem, None)).encode()
    actions = Actions(relay.store, TokenKeys.load(relay.store, None), relay.settings,
                      dnsfunc=lambda name, timeout=5: b"v=DKIM1; k=rsa; p=" + public)
    found = classify(signed, ["unsubscribe"], [None])
    action = actions.act("x1", signed, "you@example.net", [], found)
    assert action == "unsubscribed y***@example.net from tenants acme (DKIM-verified From)"
    assert suppression.find(relay.store, "acme", "you@example.net").cause == "unsubscribe"


@pytest.mark.parametrize("rcpt,expected", [
    ("someone@example.org", "550 5.7.1"),
    ("nobody@websofttt.com", "550 5.1.1"),
    ("unsubscribe%evil.example@websofttt.com", "550 5.7.1"),
    ("evil.example!unsubscribe@websofttt.com", "550 5.7.1"),
    ("unsubscribe@[127.0.0.1]", "550 5.7.1"),
    ("unsubscribe@websofttt.com.evil.example", "550 5.7.1"),
])
def test_relay_tricks_are_refused(relay, rcpt, expected):
    client = inbound(relay)
    client.mail("x@example.org")
    code, text = client.rcpt(rcpt)
    assert f"{code} {text.decode()}".startswith(expected)


def test_no_auth_is_offered_and_starttls_is(relay):
    client = inbound(relay)
    assert client.has_extn("starttls") and not client.has_extn("auth")
    assert client.docmd("AUTH", "PLAIN AGFAYg==")[0] == 502


def test_connections_per_address_are_limited(relay_factory, sink):
    relay = relay_factory(roles=("inbound",))
    relay.stop()
    settings = dataclasses.replace(relay.settings, inbound=dataclasses.replace(
        relay.settings.inbound, max_connections_per_ip=2))
    limited = RunningRelay(settings, ("inbound",))
    try:
        port = limited.ports["inbound"][0]
        first, second = (smtplib.SMTP("127.0.0.1", port, timeout=5) for _ in range(2))
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", port, timeout=5)
        assert refused.value.smtp_code == 421
        first.quit()
        time.sleep(0.2)
        smtplib.SMTP("127.0.0.1", port, timeout=5).quit()          # a slot is free again
        second.quit()
    finally:
        limited.stop()


def test_inbound_classify_cli_has_no_side_effects(relay, sink, tmp_path):
    token = delivered_token(relay, sink)
    eml = tmp_path / "reply.eml"
    eml.write_bytes(reply(f"unsubscribe+{token}@websofttt.com"))
    config = tmp_path / "websofttt.toml"
    config.write_text(f'[paths]\ndata_dir = "{relay.settings.data_dir}"\n')
    out = run_cli("inbound", "classify", str(eml), "--json", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row | {"evidence": None} == {"kind": "unsubscribe", "permanent": None, "recipients": [],
                                        "tenant": "acme", "reason": None, "evidence": None, "file": str(eml)}
    assert suppression.find(relay.store, "acme", "you@example.net") is None


def test_one_click_link_from_a_delivered_copy(relay_factory, sink):
    relay = relay_factory(roles=("submission", "delivery", "http"),
                          delivery={"routes": {"example.net": ("127.0.0.1", sink.port)}})
    relay.add_tenant()
    token = delivered_token(relay, sink)
    data = sink.received[-1][2]
    assert f"<http://127.0.0.1:8080/u/{token}>".encode() in data          # http.public_url as configured
    url = f"http://127.0.0.1:{relay.ports['http'][0]}/u/{token}"
    with urllib.request.urlopen(url, timeout=5) as page:                    # a GET (link scanner) changes nothing
        assert page.status == 200
    assert suppression.find(relay.store, "acme", "you@example.net") is None
    request = urllib.request.Request(url, data=b"List-Unsubscribe=One-Click", method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=5) as done:               # what Gmail and Yahoo send (RFC 8058)
        assert done.status == 200
    assert suppression.find(relay.store, "acme", "you@example.net").cause == "unsubscribe"
    assert rcpt_reply(relay, "app1", "you@example.net")[0] == 550


def test_acknowledged_but_unprocessed_messages_are_processed_at_the_next_start(relay_factory, sink):
    relay = relay_factory(roles=("submission", "delivery"),
                          delivery={"routes": {"example.net": ("127.0.0.1", sink.port)}})
    relay.add_tenant()
    token = delivered_token(relay, sink)
    relay.stop()
    address = f"unsubscribe+{token}@websofttt.com"
    mailbox = Mailbox(relay.settings.data_dir / "inbound" / "test.sqlite", 86400)

    async def keep_only() -> None:                 # the process died right after its 250
        await mailbox.keep("192.0.2.9", "you@example.net", [address], reply(address))
    eventloop.run(keep_only())
    mailbox.close()
    dead_pid(mailbox.path)
    restarted = RunningRelay(relay.settings, ("inbound",))
    try:
        (kind, _, action, processed), = mailbox_rows(restarted)
        assert (kind, processed) == ("unsubscribe", 1) and action.startswith("unsubscribed y***@example.net")
    finally:
        restarted.stop()


def dead_pid(path: Path) -> None:
    """Make the mailbox's rows look received by a process that is gone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE inbound SET claimed_by = ?", (gone.pid,))


def test_a_row_is_recovered_only_once_its_process_is_gone(tmp_path):
    mailbox = Mailbox(tmp_path / "inbound.sqlite", 86400)

    async def scenario() -> tuple[int, int, int]:
        await mailbox.keep("192.0.2.9", "a@example.net", ["postmaster"], b"Subject: x\r\n\r\nx\r\n")
        live = len(await mailbox.pending())         # the receiving process still works on it
        dead_pid(mailbox.path)
        return live, len(await mailbox.pending()), len(await mailbox.pending())
    try:
        assert eventloop.run(scenario()) == (0, 1, 0)   # taken over once, then ours
    finally:
        mailbox.close()


class BrokenActions:
    """An action that fails whatever the message (a bug, or a store that refuses every write)."""

    def act(self, *args) -> str:
        raise RuntimeError("the action failed")


def test_a_message_that_fails_three_times_is_set_aside_and_can_be_given_its_attempts_back(tmp_path):
    path = tmp_path / "inbound" / "node.sqlite"
    mailbox = Mailbox(path, 86400)
    handler = InboundHandler(load_settings(None), mailbox, BrokenActions())   # type: ignore[arg-type]

    async def received_then_starts() -> list[int]:
        inbound_id = await mailbox.keep("192.0.2.9", "a@example.net", ["abuse@websofttt.com"],
                                        b"Subject: spam\r\n\r\nyou sent me spam\r\n")
        await handler.process(inbound_id, "a@example.net", ["abuse@websofttt.com"], b"Subject: spam\r\n\r\nx\r\n")
        aside = [len(set_aside(path))]
        for _ in range(2):                                # each start recovers what the last one left
            dead_pid(path)
            await handler.recover()
            aside.append(len(set_aside(path)))
        dead_pid(path)
        return [*aside, len(await mailbox.pending())]     # a third start finds nothing left to try
    try:
        assert eventloop.run(received_then_starts()) == [0, 0, 1, 0]
        config = tmp_path / "websofttt.toml"
        config.write_text(f'[paths]\ndata_dir = "{tmp_path}"\n[node]\nname = "node"\n')
        listed = run_cli("inbound", "aside", "--json", "--config", str(config), cwd=tmp_path)
        (aside,) = json.loads(listed.stdout)
        assert (aside["failures"], aside["error"], aside["kind"]) == (3, "RuntimeError: the action failed", None)
        retried = run_cli("inbound", "retry", aside["id"], "--config", str(config), cwd=tmp_path)
        assert retried.returncode == 0 and set_aside(path) == []
        dead_pid(path)
        assert [r.id for r in eventloop.run(mailbox.pending())] == [aside["id"]]
        unknown = run_cli("inbound", "retry", "no-such-id", "--config", str(config), cwd=tmp_path)
        assert unknown.returncode == 2 and "no unprocessed message no-such-id" in unknown.stderr
    finally:
        mailbox.close()


def test_raw_messages_are_deleted_after_the_retention(tmp_path):
    mailbox = Mailbox(tmp_path / "inbound.sqlite", retention=-1)      # already past it

    async def scenario() -> int:
        await mailbox.keep("192.0.2.9", "a@example.net", ["abuse@websofttt.com"], b"Subject: x\r\n\r\nsecret-body\r\n")
        return await mailbox.expire()
    assert eventloop.run(scenario()) == 1
    mailbox.close()
    assert not any(b"secret-body" in p.read_bytes() for p in tmp_path.iterdir() if p.is_file())


def dsn(recipient: str, status: str, action: str = "failed", returned: bytes = b"") -> bytes:
    """A Postfix-style RFC 3464 report."""
    return (b"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
            b"To: whoever@websofttt.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
            b"--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n\r\n"
            b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
            + f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
              f"Diagnostic-Code: smtp; 550 {status} no such user\r\n\r\n".encode()
            + b"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n" + returned + b"\r\n--B--\r\n")


def verp_token(sink) -> str:
    return re.fullmatch(r"bounce\+([a-z2-7]+)@bounces\.websofttt\.com", sink.received[-1][0]).group(1)


def test_dsn_to_the_verp_address_suppresses_a_hard_bounce(relay, sink):
    delivered_token(relay, sink, "gone@example.net")
    address = f"bounce+{verp_token(sink)}@bounces.websofttt.com"
    inbound(relay).sendmail("", [address], dsn("gone@example.net", "5.1.1"))
    (kind, _, action, _), = mailbox_rows(relay)
    assert (kind, action) == ("bounce", "g***@example.net (acme): hard bounce: suppressed globally")
    assert suppression.find(relay.store, "other", "gone@example.net").cause == "hard_bounce"
    code, text = rcpt_reply(relay, "app2", "gone@example.net")
    assert (code, text) == (550, b"5.7.1 Recipient <gone@example.net> previously bounced")


def test_soft_bounce_and_delay_warning_suppress_nothing(relay, sink):
    delivered_token(relay, sink, "full@example.net")
    address = f"bounce+{verp_token(sink)}@bounces.websofttt.com"
    client = inbound(relay)
    client.sendmail("", [address], dsn("full@example.net", "4.2.2"))
    client.sendmail("", [address], dsn("full@example.net", "4.4.1", action="delayed"))
    actions = sorted(row[2] for row in mailbox_rows(relay))
    assert actions == ["delay warning or unparseable report: recorded, nothing suppressed",
                       "f***@example.net (acme): soft bounce 1 of 5"]
    assert suppression.find(relay.store, "acme", "full@example.net") is None


def test_bounce_elsewhere_is_matched_through_the_returned_headers(relay, sink):
    token = delivered_token(relay, sink, "lost@example.net")
    returned = (f"Return-Path: <bounce+{verp_token(sink)}@bounces.websofttt.com>\r\n"
                f"List-Unsubscribe: <mailto:unsubscribe+{token}@websofttt.com?subject=unsubscribe>\r\n").encode()
    inbound(relay).sendmail("", ["abuse@websofttt.com"], dsn("lost@example.net", "5.1.1", returned=returned))
    (kind, _, action, _), = mailbox_rows(relay)
    assert kind == "bounce" and action == "l***@example.net (acme): hard bounce: suppressed globally"


def test_forged_bounce_for_an_address_never_mailed_suppresses_nothing(relay):
    inbound(relay).sendmail("", ["bounce@bounces.websofttt.com"], dsn("victim@example.org", "5.1.1"))
    (kind, _, action, _), = mailbox_rows(relay)
    assert (kind, action) == ("bounce", "v***@example.org: no copy was sent there, not acted on")
    assert suppression.find(relay.store, "acme", "victim@example.org") is None


def test_inbound_classify_cli_on_bounces(relay, tmp_path):
    corpus = Path(__file__).parent / "data" / "bounces"
    config = tmp_path / "websofttt.toml"
    config.write_text(f'[paths]\ndata_dir = "{relay.settings.data_dir}"\n')
    out = run_cli("inbound", "classify", str(corpus / "postfix_user_unknown.eml"),
                  str(corpus / "postfix_mailbox_full.eml"), "--json", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    hard, full = json.loads(out.stdout)
    assert (hard["kind"], hard["permanent"], hard["reason"], hard["recipients"]) == \
        ("bounce", True, "mailbox_unknown", ["m.keller@example.org"])
    assert (full["kind"], full["permanent"], full["reason"]) == ("bounce", False, "mailbox_full")
