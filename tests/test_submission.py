"""The submission server as a tenant's app sees it: real SMTP over real TLS, every policy reply."""
from __future__ import annotations

import base64
import smtplib
import sqlite3
import time

import pytest

from policy import suppression, tenants
from relay.submission import LINE_LIMIT
from tests.conftest import PASSWORD, message


def auth_plain(client: smtplib.SMTP, user: str, password: str) -> tuple[int, str]:
    blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    code, text = client.docmd("AUTH", "PLAIN " + blob)
    return code, text.decode()


def try_login(relay, user: str, password: str) -> tuple[int, str]:
    """(code, text) of AUTH PLAIN on a new STARTTLS connection, or of its STARTTLS if that was refused."""
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=10)
    client.ehlo("client.example")
    try:
        client.starttls(context=relay.client_context())
    except smtplib.SMTPResponseException as e:
        return e.smtp_code, e.smtp_error.decode()
    client.ehlo("client.example")
    return auth_plain(client, user, password)


def reply(code_text: tuple[int, bytes]) -> str:
    code, text = code_text
    return f"{code} {text.decode() if isinstance(text, bytes) else text}"


# ---- TLS and AUTH

def test_auth_is_offered_only_after_starttls_and_refused_before(relay):
    client = relay.connect(tls=False, login=None)
    assert client.has_extn("starttls") and not client.has_extn("auth")
    assert auth_plain(client, "app1", PASSWORD)[0] == 538
    client.starttls(context=relay.client_context())
    client.ehlo("client.example")
    assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
    assert auth_plain(client, "app1", PASSWORD) == (235, "2.7.0 Authentication successful")


def test_auth_login_mechanism_works(relay):
    client = relay.connect(login=None)
    client.user, client.password = "app1", PASSWORD
    assert client.auth("LOGIN", client.auth_login, initial_response_ok=False)[0] == 235


def test_auth_before_tls_reply_text(relay):
    client = relay.connect(tls=False, login=None)
    code, text = auth_plain(client, "app1", PASSWORD)
    assert (code, text) == (538, "5.7.11 Encryption required for requested authentication mechanism")


@pytest.mark.parametrize("user,password", [("app1", "wrong password!"), ("nobody", PASSWORD)])
def test_bad_credentials_are_535_578(relay, user, password):
    client = relay.connect(login=None)
    assert auth_plain(client, user, password) == (535, "5.7.8 Authentication credentials invalid")


def test_implicit_tls_listener_offers_auth_at_once(relay):
    client = smtplib.SMTP_SSL("127.0.0.1", relay.tls_port, context=relay.client_context(), timeout=10)
    client.ehlo("client.example")
    assert not client.has_extn("starttls")
    assert auth_plain(client, "app1", PASSWORD)[0] == 235
    assert client.sendmail("app@example.com", ["you@example.net"], message()) == {}


def test_brute_force_locks_username_even_for_the_right_password(relay):
    for _ in range(5):
        assert try_login(relay, "app1", "wrong password!")[0] == 535
    assert try_login(relay, "app1", PASSWORD) == (
        454, "4.7.0 Too many failed authentication attempts, try again later")


def test_brute_force_answer_is_the_same_for_unknown_users(relay):
    for _ in range(5):
        try_login(relay, "ghost", "guess guess guess")
    assert try_login(relay, "ghost", "guess guess guess")[0] == 454


def test_brute_force_counts_per_client_address(relay):
    for i in range(5):
        try_login(relay, f"user{i}", "guess guess guess")
    # a different, valid user from the same address is locked out too
    assert try_login(relay, "app1", PASSWORD)[0] == 454


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("arrival", ["at once", "in pieces"])
def test_an_auth_answer_beyond_the_reader_limit_is_500_556_and_the_session_goes_on(relay, mechanism, arrival):
    """RFC 4954 §4: an answer to a 334 challenge longer than the server accepts gets 500 5.5.6; the rest of
    the line is read and dropped, not taken for commands. In pieces: the limit is passed before the end of
    the line has arrived."""
    client = relay.connect(login=None)
    assert client.docmd("AUTH", mechanism)[0] == 334
    answer = b"A" * (LINE_LIMIT + 10) + b"\r\n"
    if arrival == "at once":
        client.send(answer)
    else:
        client.send(answer[:LINE_LIMIT + 5])
        time.sleep(0.3)
        client.send(answer[LINE_LIMIT + 5:])
    assert reply(client.getreply()) == "500 5.5.6 Authentication exchange line is too long"
    assert client.noop()[0] == 250
    assert auth_plain(client, "app1", PASSWORD) == (235, "2.7.0 Authentication successful")


# ---- MAIL FROM

def test_unauthenticated_mail_is_refused(relay):
    client = relay.connect(login=None)
    assert reply(client.mail("app@example.com")) == "530 5.7.0 Authentication required"


def test_trusted_network_submits_without_auth(relay_factory):
    relay = relay_factory()
    relay.add_tenant("lan", networks=("127.0.0.0/8",), username=None)
    client = relay.connect(tls=False, login=None)
    assert client.sendmail("app@example.com", ["you@example.net"], message()) == {}
    assert relay.spool_rows("SELECT tenant FROM messages") == [("lan",)]


def test_suspended_tenant_is_refused_with_the_reason(relay):
    tenants.suspend(relay.store, "acme", "complaint rate above 0.3%")
    assert reply(relay.connect().mail("app@example.com")) == \
        "550 5.7.1 Sending is suspended for tenant acme: complaint rate above 0.3%"


def test_terms_not_accepted_names_version_and_command(relay_factory):
    relay = relay_factory()
    relay.add_tenant("newco", terms=False)
    text = reply(relay.connect().mail("app@example.com"))
    assert text.startswith("550 5.7.1 ")
    assert "2026-01" in text and "websofttt tenant accept-terms newco" in text


def test_tenant_rate_limit_is_451_471(relay_factory):
    relay = relay_factory()
    relay.add_tenant("slow", rate="2/1h")
    client = relay.connect()
    for _ in range(2):
        assert client.sendmail("app@example.com", ["you@example.net"], message()) == {}
    assert reply(client.mail("app@example.com")).startswith("451 4.7.1 ")


# ---- RCPT TO

@pytest.mark.parametrize("bad", ["no-at-sign", "a@@example.net", "a@b@example.net", "a@example..net", ".a@example.net"])
def test_bad_recipient_syntax_is_553_513(relay, bad):
    client = relay.connect()
    client.mail("app@example.com")
    code, text = client.rcpt(bad)
    assert code == 553 and text.startswith(b"5.1.3")


def test_too_many_recipients_is_452_453(relay_factory):
    relay = relay_factory(max_recipients=2)
    relay.add_tenant()
    client = relay.connect()
    client.mail("app@example.com")
    assert client.rcpt("a@example.net")[0] == 250
    assert client.rcpt("b@example.net")[0] == 250
    assert reply(client.rcpt("c@example.net")) == "452 4.5.3 Too many recipients (at most 2 per message)"


def test_suppressed_recipients_refused_with_cause_others_queued(relay):
    suppression.add(relay.store, "Gone@Example.NET", "acme", "unsubscribe")
    suppression.add(relay.store, "dead@example.net", suppression.GLOBAL, "hard_bounce")
    suppression.add(relay.store, "other@example.net", "othertenant", "complaint")
    client = relay.connect()
    client.mail("app@example.com")
    assert reply(client.rcpt("gone@example.net")) == \
        "550 5.7.1 Recipient <gone@example.net> has unsubscribed from this sender"
    assert reply(client.rcpt("dead@example.net")) == "550 5.7.1 Recipient <dead@example.net> previously bounced"
    assert client.rcpt("other@example.net")[0] == 250       # another tenant's suppression does not apply
    assert client.rcpt("live@example.net")[0] == 250
    code, text = client.data(message())
    assert code == 250
    assert sorted(r for (r,) in relay.spool_rows("SELECT recipient FROM recipients")) == \
        ["live@example.net", "other@example.net"]


# ---- DATA

def test_message_over_the_size_limit_is_552_534(relay_factory):
    relay = relay_factory(max_message_size=2000)
    relay.add_tenant()
    client = relay.connect()
    client.mail("app@example.com")
    client.rcpt("you@example.net")
    assert reply(client.data(message(body="x" * 70 + "\r\n") * 40)) == \
        "552 5.3.4 Message exceeds the maximum size of 2000 bytes"
    assert relay.spool_rows("SELECT count(*) FROM messages") == [(0,)]


def test_size_declared_in_mail_from_is_checked_early(relay_factory):
    relay = relay_factory(max_message_size=2000)
    relay.add_tenant()
    assert reply(relay.connect().mail("app@example.com", ["SIZE=5000"])).startswith("552 5.3.4 ")


@pytest.mark.parametrize("raw,expected", [
    (b"From: app@example.com\r\nTo: you@example.net\r\n\r\nno subject\r\n",
     "554 5.6.0 Message has no Subject header"),
    (message(sender="x@evil.org"), "550 5.7.1 From domain evil.org is not allowed for this sender"),
    (message(extra="X-WebSoftTT-Tenant: other\r\n"), "550 5.7.1 "),
    (message(extra="X-Long: " + "a" * 2000 + "\r\n"), "554 5.6.0 Header line longer than 998 octets"),
    (message(subject="=?utf-8?b?" + base64.b64encode("\u0007".encode()).decode() + "?="), "554 5.6.0 "),
])
def test_header_policy_replies_reach_the_client(relay, raw, expected):
    client = relay.connect()
    client.mail("app@example.com")
    client.rcpt("you@example.net")
    assert reply(client.data(raw)).startswith(expected)
    assert relay.spool_rows("SELECT count(*) FROM messages") == [(0,)]


def test_line_beyond_the_reader_limit_gets_a_policy_reply(relay):
    client = relay.connect()
    client.mail("app@example.com")
    client.rcpt("you@example.net")
    code, text = client.data(message(body="y" * (1024 * 1024 + 10) + "\r\n"))
    assert (code, text[:6]) == (554, b"5.6.0 ")


def test_accepted_message_is_spooled_with_trace_headers_and_tenant_bytes_intact(relay):
    original = message(extra="X-Campaign: spring\r\nX-Custom:  kept   as is \r\n")
    client = relay.connect()
    code, text = client.data_result = (None, None)
    client.mail("app@example.com")
    client.rcpt("you@example.net")
    code, text = client.data(original)
    assert code == 250 and text.startswith(b"2.0.0 queued as ")
    queue_id = text.decode().split()[-1]
    ((data, tenant, campaign),) = relay.spool_rows("SELECT data, tenant, campaign FROM messages WHERE id = ?",
                                                   (queue_id,))
    assert (tenant, campaign) == ("acme", "spring")
    assert data.endswith(original)
    added = data[:-len(original)].decode()
    received, _, rest = added.partition("\r\nMessage-ID: ")
    assert received.startswith("Received: from client.example ([127.0.0.1])\r\n\tby relay.websofttt.com")
    assert f"with ESMTPSA id {queue_id}" in received and "(tenant acme; TLSv1.3" in received
    assert rest.startswith(f"<{queue_id}@websofttt.com>\r\nDate: ")


def test_tenant_message_id_and_date_are_kept(relay):
    original = message(extra="Message-ID: <own@example.com>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n")
    client = relay.connect()
    assert client.sendmail("app@example.com", ["you@example.net"], original) == {}
    ((data,),) = relay.spool_rows("SELECT data FROM messages")
    assert data.count(b"Message-ID:") == 1 and data.count(b"\r\nDate:") == 1


def test_queued_message_is_durable_for_another_process(relay):
    client = relay.connect()
    code, text = client.mail("app@example.com") and client.rcpt("you@example.net") and client.data(message())
    queue_id = text.decode().split()[-1]
    # read with a fresh connection as another process would: the row is committed, not in a cache
    conn = sqlite3.connect(relay.settings.spool_dir / "shard-0.sqlite")
    assert conn.execute("SELECT state FROM recipients WHERE queue_id = ?", (queue_id,)).fetchall() == [("queued",)]
