"""Fresh mail goes from submission to delivery in memory; the spool is read back only when it has to be.

Real parts: the submission and delivery of one worker, real next hops (aiosmtpd sinks), the real spool
and store. What delivery reads back from the spool is observed by wrapping `Spool.body` and `Spool.due`.
"""
from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from collections import Counter

import pytest

from relay import delivery, fresh, spool
from relay.delivery import DeliveryLoop
from relay.smtp_out import Courier
from relay.spool import Spool
from tests.conftest import Sink, at_once, message, serve_sink
from tests.test_delivery import start, submit, wait_states

_TOKEN = re.compile(r"bounce\+([a-z2-7]+)@bounces\.websofttt\.com")


@pytest.fixture
def reads(monkeypatch) -> dict[str, list[str]]:
    """The queue ids delivery read back from the spool: bodies read, and rows the scan returned."""
    seen: dict[str, list[str]] = {"body": [], "due": []}
    body, due = Spool.body, Spool.due

    def counting_body(self, queue_id):
        seen["body"].append(queue_id)
        return body(self, queue_id)

    def counting_due(self, *args, **kwargs):
        rows = due(self, *args, **kwargs)
        seen["due"].extend(r.queue_id for r in rows)
        return rows
    monkeypatch.setattr(Spool, "body", counting_body)
    monkeypatch.setattr(Spool, "due", counting_due)
    return seen


class PacedSink(Sink):
    """A next hop that takes `delay` seconds over DATA, or holds it until `gate` is set."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.checks: list = []           # what `check` said about each copy, when DATA arrived

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.delay)
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        if getattr(self, "check", None):
            self.checks.append(self.check(envelope))
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def paced_sink():
    handler = PacedSink()
    yield from serve_sink(handler, before_stop=handler.gate.set)     # held sessions finish first


def submit_many(relay, prefix: str, messages: int, recipients: int) -> list[str]:
    """`messages` transactions on one connection, each to `recipients` addresses of its own; their queue ids."""
    ids = []
    client = relay.connect()
    for i in range(messages):
        client.mail("app@example.com")
        for j in range(recipients):
            assert client.rcpt(f"{prefix}-{i}-{j}@example.net")[0] == 250
        code, text = client.data(message())
        assert code == 250, text
        ids.append(text.decode().split()[-1])
    client.quit()
    return ids


def test_fresh_mail_is_delivered_without_reading_the_spool(relay_factory, sink, reads):
    relay = start(relay_factory, sink)
    queue_id = submit(relay, ("a@example.net", "b@example.net"))
    wait_states(relay, queue_id, {"delivered"})
    assert sorted(r[0] for _, r, _ in sink.received) == ["a@example.net", "b@example.net"]
    assert queue_id not in reads["body"] and queue_id not in reads["due"]
    # the tokens the copies carry are the ones recorded, in the store and in the spool
    tokens = {_TOKEN.fullmatch(mail_from).group(1) for mail_from, _, _ in sink.received}
    assert {r["token"] for r in relay.store.all("SELECT token FROM sent WHERE queue_id = ?", [queue_id])} == tokens
    assert {t for (t,) in relay.spool_rows("SELECT token FROM recipients WHERE queue_id = ?", (queue_id,))} == tokens
    assert relay.spool_rows("SELECT data FROM messages WHERE id = ?", (queue_id,)) == [(None,)]


@pytest.mark.parametrize("batch", ["committed", "failed"])
def test_a_copy_leaves_only_once_its_token_is_in_the_store(relay_factory, paced_sink, monkeypatch, batch):
    """The next hop looks the token up in the store when DATA arrives: a bounce naming it right away must find it.
    If the hand-off's batch of sent rows fails, each copy records its own token first."""
    if batch == "failed":
        def locked(*args):
            raise sqlite3.OperationalError("database is locked")
        monkeypatch.setattr(fresh, "_record_sent", locked)
    relay = start(relay_factory, paced_sink)

    def check(envelope) -> tuple | None:
        token = _TOKEN.fullmatch(envelope.mail_from).group(1)
        with sqlite3.connect(relay.settings.store_path) as conn:
            return conn.execute("SELECT tenant, recipient FROM sent WHERE token = ?", (token,)).fetchone()
    paced_sink.check = check
    queue_id = submit(relay, ("a@example.net", "b@example.net", "c@example.net"))
    wait_states(relay, queue_id, {"delivered"})
    assert sorted(paced_sink.checks) == [("acme", f"{r}@example.net") for r in "abc"]
    assert relay.store.all("SELECT count(*) AS n FROM sent")[0]["n"] == 3


def test_a_deferred_recipient_is_retried_from_the_spool(relay_factory, sink, reads):
    sink.mode = "defer"
    relay = start(relay_factory, sink)
    queue_id = submit(relay)
    ((_, _, reply),) = wait_states(relay, queue_id, {"deferred"})
    assert reply.startswith("451 4.3.0") and queue_id not in reads["body"]
    sink.mode = "accept"
    wait_states(relay, queue_id, {"delivered"})
    assert queue_id in reads["due"] and queue_id in reads["body"]          # the retry came from the spool
    ((mail_from, _, _),) = sink.received
    assert relay.spool_rows("SELECT token, attempts FROM recipients WHERE queue_id = ?", (queue_id,)) == [
        (_TOKEN.fullmatch(mail_from).group(1), 2)]                          # the first attempt's token


def test_a_restart_delivers_what_was_handed_over_but_never_sent(relay_factory, sink, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(DeliveryLoop, "_pump", lambda self: None)           # the worker ends before a copy starts
        relay = start(relay_factory, sink)
        queue_id = submit(relay, ("a@example.net", "b@example.net"))
        rows = relay.spool_rows("SELECT state, next_attempt FROM recipients WHERE queue_id = ?", (queue_id,))
        assert [state for state, _ in rows] == ["queued"] * 2
        assert all(due > time.time() + spool.LEASE / 2 for _, due in rows)  # leased to the hand-off
        time.sleep(1.5)                                                    # the scan (every second) leaves them
        assert sink.received == []
        relay.stop()
    relay = relay_factory(roles=("submission", "delivery"), delivery={
        "routes": {"example.net": ("127.0.0.1", sink.port)}})
    started = time.monotonic()
    wait_states(relay, queue_id, {"delivered"})
    assert time.monotonic() - started < spool.LEASE / 2                    # at once, not when the leases end
    assert sorted(r[0] for _, r, _ in sink.received) == ["a@example.net", "b@example.net"]


def test_without_delivery_on_this_node_nothing_is_handed_over(relay_factory, sink):
    relay = start(relay_factory, sink, roles=("submission",))
    queue_id = submit(relay)
    ((state, due),) = relay.spool_rows("SELECT state, next_attempt FROM recipients WHERE queue_id = ?", (queue_id,))
    assert state == "queued" and due <= time.time()                       # due at once for whoever delivers
    assert relay.store.all("SELECT count(*) AS n FROM sent")[0]["n"] == 0


def test_a_full_hand_off_leaves_mail_in_the_spool_without_blocking(relay_factory, paced_sink, monkeypatch, reads):
    monkeypatch.setattr(fresh, "FRESH_RECIPIENTS", 2)
    paced_sink.gate.clear()                                                # the first copy waits at the next hop
    relay = start(relay_factory, paced_sink, concurrency=1, data_timeout=20.0)
    ids = [submit(relay, (f"r{i}@example.net",)) for i in range(5)]       # each answered 250 at once
    time.sleep(0.3)
    assert len(reads["body"]) == 0 and len(paced_sink.received) == 0
    paced_sink.gate.set()
    for queue_id in ids:
        wait_states(relay, queue_id, {"delivered"})
    assert sorted(r[0] for _, r, _ in paced_sink.received) == [f"r{i}@example.net" for i in range(5)]
    assert set(reads["body"]) == set(ids[3:])       # 1 in flight and 2 waiting in memory; the rest from the spool


@pytest.mark.parametrize("squeeze", [False, True], ids=["roomy", "squeezed"])
def test_no_recipient_is_attempted_twice_under_load(relay_factory, paced_sink, monkeypatch, reads, squeeze):
    """Many sessions at once, two copies on their way at most. Squeezed: a hand-off of 3 recipients and leases of
    0.3 s, so that mail overflows to the spool and the scan takes over mail that waited in memory too long."""
    if squeeze:
        monkeypatch.setattr(fresh, "FRESH_RECIPIENTS", 3)
        monkeypatch.setattr(fresh, "LEASE", 0.3)
        monkeypatch.setattr(delivery, "LEASE", 0.3)
        monkeypatch.setattr(spool, "LEASE", 0.3)
    sending = Counter()
    send = Courier.send

    async def counting_send(self, destinations, envelope_from, recipient, data, *more):
        sending["now"] += 1
        sending["peak"] = max(sending["peak"], sending["now"])
        try:
            return await send(self, destinations, envelope_from, recipient, data, *more)
        finally:
            sending["now"] -= 1
    monkeypatch.setattr(Courier, "send", counting_send)
    paced_sink.delay = 0.02
    relay = start(relay_factory, paced_sink, concurrency=2)
    ids: list[str] = []
    at_once(*[lambda k=k: ids.extend(submit_many(relay, f"s{k}", 5, 2)) for k in range(6)])
    assert len(ids) == 30
    for queue_id in ids:
        wait_states(relay, queue_id, {"delivered"}, timeout=60)
    received = Counter(r[0] for _, r, _ in paced_sink.received)
    assert len(received) == 60 and set(received.values()) == {1}
    assert {a for (a,) in relay.spool_rows("SELECT DISTINCT attempts FROM recipients")} == {1}
    assert sending["peak"] <= 2
    if squeeze:
        assert 0 < len(set(reads["body"]) & set(ids)) < 30
    else:
        assert not set(reads["body"]) & set(ids) and not set(reads["due"]) & set(ids)


def test_the_client_leaving_during_the_fsync_does_not_lose_the_hand_off(relay_factory, sink, monkeypatch):
    """A session cancelled while its message is being committed: the message is durable, so it is delivered (from
    memory, not after the lease)."""
    entered = threading.Event()
    commit = Spool._commit

    def slow_commit(self, ops):
        if not entered.is_set():            # the message's commit (the first of this spool)
            entered.set()
            time.sleep(0.5)                 # the client is gone by the time it is on disk
        return commit(self, ops)
    monkeypatch.setattr(Spool, "_commit", slow_commit)
    relay = start(relay_factory, sink)
    client = relay.connect()
    client.mail("app@example.com")
    client.rcpt("gone@example.net")
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(message() + b".\r\n")
    assert entered.wait(5)
    client.close()                          # the file too: the socket really closes
    deadline = time.monotonic() + spool.LEASE / 2
    while not sink.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r for _, r, _ in sink.received] == [["gone@example.net"]]



def test_a_failing_write_does_not_fail_the_record_committed_with_it(tmp_path):
    """A record nobody waits for rides in the next enqueue's transaction; if that enqueue fails (here: the same
    recipient twice), the record is still committed: it never turns a delivered copy into a second one."""
    from relay.spool import Message, SpoolError

    async def scenario() -> tuple:
        store = Spool(tmp_path / "shard-0.sqlite")
        try:
            await store.enqueue(Message("m1", "acme", "a@example.com", ("x@example.net",), b"data"))
            blocker = store._submit(lambda conn: time.sleep(0.3))    # the writer is busy: the next two
            await asyncio.sleep(0.05)                                         # are committed as one group
            recorded = store.record("m1", "x@example.net", "delivered", 1, 0, "250 ok", None, wait=False)
            refused = asyncio.ensure_future(store.enqueue(
                Message("m2", "acme", "a@example.com", ("y@example.net", "y@example.net"), b"data")))
            await blocker
            outcome = await asyncio.gather(recorded, refused, return_exceptions=True)
            rows = store._reader.execute("SELECT queue_id, state FROM recipients ORDER BY queue_id").fetchall()
            return outcome, rows
        finally:
            store.close()
    (recorded, refused), rows = asyncio.run(scenario())
    assert recorded is None and isinstance(refused, SpoolError)
    assert rows == [("m1", "delivered")]


def test_a_record_nobody_waits_for_is_committed_soon_without_company(tmp_path):
    from relay.spool import Message

    async def scenario() -> float:
        store = Spool(tmp_path / "shard-0.sqlite")
        try:
            await store.enqueue(Message("m1", "acme", "a@example.com", ("x@example.net",), b"data"))
            started = time.monotonic()
            await store.record("m1", "x@example.net", "delivered", 1, 0, "250 ok", None, wait=False)
            return time.monotonic() - started
        finally:
            store.close()
    assert asyncio.run(scenario()) < spool.LATER + 0.5
