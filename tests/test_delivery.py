"""Delivery to real local SMTP sinks that accept, defer, reject, drop or hang."""
from __future__ import annotations

import json
import re
import time

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from policy import dkimkeys, suppression
from policy.keys import (dkim_public_value, generate_dkim_key, generate_tls_cert, load_private_key,
                         server_ssl_context)
from policy.tokens import TokenKeys
from tests.conftest import Sink, SinkController, free_port, message, run_cli


def start(relay_factory, sink, roles=("submission", "delivery"), **delivery):
    options = {"routes": {"example.net": ("127.0.0.1", sink.port)}, "retry_schedule": (0.5,),
               "command_timeout": 2.0, "data_timeout": 2.0, "connect_timeout": 2.0} | delivery
    relay = relay_factory(roles=roles, delivery=options)
    relay.add_tenant()
    return relay


def submit(relay, recipients=("you@example.net",), **kw) -> str:
    client = relay.connect()
    client.mail("app@example.com")
    for r in recipients:
        assert client.rcpt(r)[0] == 250
    code, text = client.data(message(**kw))
    assert code == 250
    client.quit()
    return text.decode().split()[-1]


def wait_states(relay, queue_id, expected: set[str], timeout=15.0) -> list[tuple]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = relay.spool_rows("SELECT recipient, state, last_reply FROM recipients WHERE queue_id = ?", (queue_id,))
        if rows and {state for _, state, _ in rows} <= expected:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"states never reached {expected}: {rows}")


def test_each_recipient_gets_its_own_signed_copy(relay_factory, sink):
    relay = start(relay_factory, sink)
    queue_id = submit(relay, ("a@example.net", "b@example.net"))
    wait_states(relay, queue_id, {"delivered"})
    assert len(sink.received) == 2
    tokens = TokenKeys.load(relay.store, None)
    public = dkim_public_value(load_private_key(relay.settings.dkim_key)).encode()
    seen = set()
    for mail_from, rcpts, data in sink.received:
        token = re.fullmatch(r"bounce\+([a-z2-7]+)@bounces\.websofttt\.com", mail_from).group(1)
        assert tokens.verify(token) and len(rcpts) == 1
        assert f"<mailto:unsubscribe+{token}@websofttt.com?subject=unsubscribe>".encode() in data
        assert f"<http://127.0.0.1:8080/u/{token}>".encode() in data
        assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in data
        assert b"Feedback-ID: default:acme:websofttt.com\r\n" in data
        assert dkim.verify(data, dnsfunc=lambda name, timeout=5: b"v=DKIM1; k=rsa; p=" + public)
        h = re.search(rb"\bh=([^;]+);", re.sub(rb"\s+", b"", data.split(b"\r\n\r\n")[0])).group(1).split(b":")
        for name in (b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe",
                     b"list-unsubscribe-post", b"feedback-id"):
            assert name in h
        assert h.count(b"from") == 2 and h.count(b"subject") == 2
        seen.add((rcpts[0], token))
    assert {r for r, _ in seen} == {"a@example.net", "b@example.net"} and len({t for _, t in seen}) == 2
    assert relay.store.all("SELECT count(*) AS n FROM sent")[0]["n"] == 2
    assert relay.spool_rows("SELECT data FROM messages WHERE id = ?", (queue_id,)) == [(None,)]


def test_a_recipient_given_twice_is_accepted_once_and_gets_one_copy(relay_factory, sink):
    relay = start(relay_factory, sink)
    client = relay.connect()
    client.mail("app@example.com")
    assert client.rcpt("a@example.net")[0] == 250
    assert client.rcpt("a@example.net") == (250, b"2.1.5 Recipient OK (duplicate, one copy)")
    code, text = client.data(message())
    assert code == 250
    wait_states(relay, text.decode().split()[-1], {"delivered"})
    assert [rcpts for _, rcpts, _ in sink.received] == [["a@example.net"]]


def test_connection_is_reused_across_copies(relay_factory, sink):
    relay = start(relay_factory, sink, roles=("submission",))
    ids = [submit(relay) for _ in range(6)]
    relay.stop()
    relay = relay_factory(roles=("submission", "delivery"), delivery={
        "routes": {"example.net": ("127.0.0.1", sink.port)}, "per_destination": 1})
    for queue_id in ids:
        wait_states(relay, queue_id, {"delivered"})
    assert len(sink.received) == 6 and sink.sessions == 1 and sink.peak == 1


def test_per_destination_concurrency_limit_holds(relay_factory, sink):
    sink.mode = "slow"
    relay = start(relay_factory, sink, per_destination=2)
    queue_id = submit(relay, tuple(f"r{i}@example.net" for i in range(8)))
    wait_states(relay, queue_id, {"delivered"})
    assert len(sink.received) == 8 and sink.peak == 2


def test_mailbox_unknown_fails_and_suppresses_globally(relay_factory, sink):
    sink.mode = "reject"
    relay = start(relay_factory, sink)
    queue_id = submit(relay)
    ((_, _, reply),) = wait_states(relay, queue_id, {"failed"})
    assert reply == "550 5.1.1 no such user here"
    entry = suppression.find(relay.store, "another-tenant", "you@example.net")
    assert entry is not None and entry.cause == "hard_bounce" and entry.scope == "global"


def test_policy_rejection_fails_without_suppressing(relay_factory, sink):
    sink.mode = "policy"
    relay = start(relay_factory, sink)
    wait_states(relay, submit(relay), {"failed"})
    assert suppression.find(relay.store, "acme", "you@example.net") is None


@pytest.mark.parametrize("mode", ["defer", "drop", "hang"])
def test_temporary_failures_are_retried_until_delivered(relay_factory, sink, mode):
    sink.mode = mode
    relay = start(relay_factory, sink)
    queue_id = submit(relay)
    ((_, _, reply),) = wait_states(relay, queue_id, {"deferred"})
    assert reply.startswith("451 4.")
    sink.mode = "accept"
    wait_states(relay, queue_id, {"delivered"})
    assert len(sink.received) == 1


def test_recipient_suppressed_after_queueing_is_never_sent(relay_factory, sink):
    relay = start(relay_factory, sink, roles=("submission",))
    queue_id = submit(relay)
    suppression.add(relay.store, "you@example.net", "acme", "unsubscribe")
    relay.stop()
    relay = relay_factory(roles=("submission", "delivery"), delivery={
        "routes": {"example.net": ("127.0.0.1", sink.port)}})
    ((_, _, reply),) = wait_states(relay, queue_id, {"suppressed"})
    assert "unsubscribed" in reply and sink.received == []


def test_expired_message_is_not_sent(relay_factory, sink):
    sink.mode = "defer"
    relay = start(relay_factory, sink, max_queue_lifetime=1.5)
    queue_id = submit(relay)
    wait_states(relay, queue_id, {"expired"}, timeout=20)
    assert sink.received == []


def test_queue_show_retry_and_drop_from_the_cli(relay_factory, sink, tmp_path):
    sink.mode = "defer"
    relay = start(relay_factory, sink, retry_schedule=(3600.0,))
    queue_id = submit(relay)
    wait_states(relay, queue_id, {"deferred"})
    config = tmp_path / "websofttt.toml"
    config.write_text(f'[paths]\ndata_dir = "{relay.settings.data_dir}"\n[node]\nname = "test"\n')
    show = run_cli("queue", "show", queue_id, "--reason", "ticket 1", "--json", "--config", str(config), cwd=tmp_path)
    detail = json.loads(show.stdout)
    assert detail["recipients"][0]["state"] == "deferred"
    assert [e["kind"] for e in detail["events"]] == ["deferred"]
    sink.mode = "accept"
    out = run_cli("queue", "retry", queue_id, "--config", str(config), cwd=tmp_path)
    assert out.stdout.strip() == "1 recipient(s) due now"
    wait_states(relay, queue_id, {"delivered"})          # not an hour later
    out = run_cli("queue", "drop", "no-such-id", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2 and "no message no-such-id" in out.stderr
    sink.mode = "defer"
    second = submit(relay, ("c@example.net",))
    wait_states(relay, second, {"deferred"})
    out = run_cli("queue", "drop", second, "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert relay.spool_rows("SELECT state FROM recipients WHERE queue_id = ?", (second,)) == [("dropped",)]
    assert relay.spool_rows("SELECT data FROM messages WHERE id = ?", (second,)) == [(None,)]


def test_delivered_body_leaves_no_bytes_in_the_data_dir(relay_factory, sink):
    relay = start(relay_factory, sink)
    marker = "unique-marker-7f3a9c-do-not-keep"
    queue_id = submit(relay, body=f"{marker}\r\n")
    wait_states(relay, queue_id, {"delivered"})
    assert marker.encode() in sink.received[0][2]
    deadline = time.monotonic() + 10
    while True:
        leftovers = [p for p in relay.settings.data_dir.rglob("*")
                     if p.is_file() and marker.encode() in p.read_bytes()]
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert leftovers == []


def test_tenant_domain_key_gives_an_aligned_second_signature(relay_factory, sink):
    relay = start(relay_factory, sink)
    key = dkimkeys.add_domain(relay.store, "acme", "example.com", "s1")
    records = {
        "s1._domainkey.example.com.": dkim_public_value(key.key()).encode(),
        "s1._domainkey.websofttt.com.": dkim_public_value(load_private_key(relay.settings.dkim_key)).encode(),
    }
    queue_id = submit(relay)
    wait_states(relay, queue_id, {"delivered"})
    data = sink.received[0][2]
    signatures = re.findall(rb"^DKIM-Signature:.*?\bd=([a-z.]+);", data, re.M | re.S)
    assert signatures == [b"example.com", b"websofttt.com"]
    for index in range(2):
        assert dkim.DKIM(data).verify(idx=index, dnsfunc=lambda name, timeout=5: b"v=DKIM1; k=rsa; p=" +
                                      records[name.decode() if isinstance(name, bytes) else name])


def test_copy_from_a_domain_without_a_key_has_only_the_provider_signature(relay_factory, sink):
    relay = start(relay_factory, sink)
    queue_id = submit(relay)
    wait_states(relay, queue_id, {"delivered"})
    assert re.findall(rb"^DKIM-Signature:.*?\bd=([a-z.]+);", sink.received[0][2], re.M | re.S) == [b"websofttt.com"]


class AuthSink(Sink):
    def authenticate(self, server, session, envelope, mechanism, auth_data):
        return AuthResult(success=(auth_data.login, auth_data.password) == (b"relay", b"s3cret smarthost pw"))


@pytest.fixture
def smarthost(tmp_path):
    """A provider smarthost: STARTTLS with its own certificate, AUTH required."""
    cert, key = tmp_path / "sh-cert.pem", tmp_path / "sh-key.pem"
    generate_tls_cert(cert, key, "localhost")
    handler = AuthSink()
    handler.port, handler.cert = free_port(), cert
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port, tls_context=server_ssl_context(cert, key),
                            require_starttls=True, auth_required=True, authenticator=handler.authenticate)
    controller.start()
    yield handler
    controller.stop()


def smarthost_options(tmp_path, smarthost, ca) -> dict:
    password = tmp_path / "smarthost.pw"
    password.write_text("s3cret smarthost pw\n")
    return {"mode": "smarthost", "smarthost": ("127.0.0.1", smarthost.port), "smarthost_tls": True,
            "smarthost_ca_file": ca, "smarthost_username": "relay", "smarthost_password_file": password,
            "routes": {}, "retry_schedule": (60.0,), "command_timeout": 2.0, "connect_timeout": 2.0}


def test_smarthost_with_required_tls_and_auth(relay_factory, smarthost, tmp_path):
    relay = relay_factory(roles=("submission", "delivery"), delivery=smarthost_options(tmp_path, smarthost,
                                                                                      smarthost.cert))
    relay.add_tenant()
    wait_states(relay, submit(relay), {"delivered"})
    assert len(smarthost.received) == 1


def test_smarthost_with_an_unverifiable_certificate_gets_nothing(relay_factory, smarthost, tmp_path):
    other_cert = tmp_path / "other-cert.pem"
    generate_tls_cert(other_cert, tmp_path / "other-key.pem", "localhost")
    relay = relay_factory(roles=("submission", "delivery"), delivery=smarthost_options(tmp_path, smarthost,
                                                                                      other_cert))
    relay.add_tenant()
    ((_, _, reply),) = wait_states(relay, submit(relay), {"deferred"})
    assert reply.startswith("451 4.4.1 127.0.0.1:") and "CERTIFICATE_VERIFY_FAILED" in reply
    assert smarthost.received == []


def test_ed25519_key_adds_a_second_provider_signature(relay_factory, sink, tmp_path):
    ed_path = tmp_path / "e1.pem"
    generate_dkim_key(ed_path, ed25519_key=True)
    relay = relay_factory(roles=("submission", "delivery"), dkim={"ed25519_key_file": ed_path},
                          delivery={"routes": {"example.net": ("127.0.0.1", sink.port)}})
    relay.add_tenant()
    wait_states(relay, submit(relay), {"delivered"})
    data = sink.received[0][2]
    records = {"s1._domainkey.websofttt.com.": b"v=DKIM1; k=rsa; p=" +
               dkim_public_value(load_private_key(relay.settings.dkim_key)).encode(),
               "e1._domainkey.websofttt.com.": b"v=DKIM1; k=ed25519; p=" +
               dkim_public_value(load_private_key(ed_path)).encode()}
    assert re.findall(rb"\ba=([a-z0-9-]+);", data) == [b"rsa-sha256", b"ed25519-sha256"]
    for index in range(2):
        assert dkim.DKIM(data).verify(idx=index, dnsfunc=lambda name, timeout=5: records[
            name.decode() if isinstance(name, bytes) else name])


def test_a_hanging_destination_does_not_hold_up_the_others(relay_factory, sink):
    slow = Sink("hang")
    slow.port = free_port()
    controller = SinkController(slow, hostname="127.0.0.1", port=slow.port)
    controller.start()
    try:
        relay = start(relay_factory, sink, routes={"example.net": ("127.0.0.1", sink.port),
                                                   "slow.example": ("127.0.0.1", slow.port)},
                      command_timeout=20.0, data_timeout=20.0)
        stuck = submit(relay, ("a@slow.example", "b@slow.example", "c@slow.example"))
        time.sleep(0.5)                                   # the slow copies are now hanging in DATA
        started = time.monotonic()
        wait_states(relay, submit(relay), {"delivered"})
        assert time.monotonic() - started < 3
        assert {s for (s,) in relay.spool_rows("SELECT state FROM recipients WHERE queue_id = ?", (stuck,))
                } == {"queued"}
    finally:
        controller.stop()


def test_a_rotated_key_signs_once_active_without_a_restart(relay_factory, sink, monkeypatch):
    from relay import signer
    monkeypatch.setattr(signer, "KEY_REFRESH", 0.0)
    relay = start(relay_factory, sink)
    pending = dkimkeys.rotate(relay.store, "s2", 3600)                # published, not yet signing
    wait_states(relay, submit(relay), {"delivered"})
    assert b" s=s1;" in sink.received[-1][2]
    active = dkimkeys.rotate(relay.store, "s3", 0)
    wait_states(relay, submit(relay), {"delivered"})
    data = sink.received[-1][2]
    assert b" s=s3;" in data and f" s={pending.selector};".encode() not in data
    public = dkim_public_value(active.key()).encode()
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: b"v=DKIM1; k=rsa; p=" + public
                       if name == b"s3._domainkey.websofttt.com." else None)


def test_a_store_failure_after_the_remote_250_does_not_send_the_copy_again(relay_factory, sink, monkeypatch):
    import sqlite3
    from types import SimpleNamespace

    from relay import delivery

    def locked(*args):
        raise sqlite3.OperationalError("database is locked")
    # the delivery loop's store writes after the 250 fail (the submission's own are untouched)
    monkeypatch.setattr(delivery, "bounces", SimpleNamespace(delivered=locked))
    monkeypatch.setattr(delivery, "standing", SimpleNamespace(OUTCOMES=delivery.standing.OUTCOMES, note=locked))
    relay = start(relay_factory, sink)
    queue_id = submit(relay)
    wait_states(relay, queue_id, {"delivered"})
    time.sleep(1.5)                                                   # a retry would come after 0.5 s
    assert len(sink.received) == 1
    assert wait_states(relay, queue_id, {"delivered"})[0][1] == "delivered"


def test_a_failing_store_does_not_stop_the_delivery_loop(relay_factory, sink):
    """The outbox read fails (a store that is down, or its table gone): logged, and delivery goes on."""
    relay = start(relay_factory, sink)
    relay.store.execute("ALTER TABLE outbox RENAME TO outbox_elsewhere")
    time.sleep(2.5)                          # the loop looks at the outbox every second
    relay.store.execute("ALTER TABLE outbox_elsewhere RENAME TO outbox")
    wait_states(relay, submit(relay), {"delivered"})
