"""The store never blocks an event loop: a relay on PostgreSQL behind a slow link (tests/latency_proxy.py)
keeps answering every session whose command does not need the store, a command that finds no connection
within `store.acquire_timeout` is answered 451 4.3.0, and nothing waits on a query it does not need."""
from __future__ import annotations

import dataclasses
import smtplib
import statistics
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from policy import store_postgres, tenants, terms
from policy.settings import Store as StoreSettings
from policy.engines import open_store
from policy.store_sqlite import SqliteStore
from tests.conftest import RunningRelay, make_settings, message, prepare
from tests.latency_proxy import DelayProxy


def through(url: str, proxy: DelayProxy) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}{'@' if parts.username else ''}"
                                            f"127.0.0.1:{proxy.port}"))


@pytest.fixture
def slow_relay(tmp_path, pg_url):
    """A submission worker on PostgreSQL through a proxy adding `delay_ms`; tenant acme trusts 127.0.0.0/8."""
    running: list = []

    def start(delay_ms: float, acquire_timeout: float = 2.0, sink=None) -> RunningRelay:
        """`sink`: also the delivery role, sending example.net to it."""
        target = urlsplit(pg_url)
        proxy = DelayProxy("127.0.0.1", target.port, delay_ms)
        proxy.start()
        delivery = {"routes": {"example.net": ("127.0.0.1", sink.port)}, "retry_schedule": (0.5,)} if sink else None
        direct = dataclasses.replace(make_settings(tmp_path / "var", delivery), store=StoreSettings(pg_url))
        prepare(direct)
        store = open_store(direct)
        tenants.add(store, "acme", ["example.com"], ["127.0.0.0/8"], None)
        terms.accept(store, direct.provider.terms_version, "acme", None)
        store.close()
        relay = RunningRelay(dataclasses.replace(direct, store=StoreSettings(through(pg_url, proxy), acquire_timeout)),
                             ("submission", "delivery") if sink else ("submission",))
        relay.proxy = proxy
        running.append((relay, proxy))
        return relay
    yield start
    for relay, proxy in running:
        proxy.resume()
        relay.stop()
        proxy.stop()


def timed_noops(port: int, seconds: float) -> list[float]:
    """Reply times of NOOP on a session of its own, one every 20 ms for `seconds`."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.ehlo("heartbeat.example")
    times, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        assert client.noop()[0] == 250
        times.append(time.perf_counter() - started)
        time.sleep(0.02)
    client.quit()
    return times


def in_thread(fn) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_sessions_that_need_no_store_are_answered_while_others_wait_for_it(slow_relay):
    """Every store round trip takes 150 ms here: a session sending mail waits for its own queries, a
    session saying NOOP beside it is answered at once (with the store on the loop it waited for them)."""
    relay = slow_relay(delay_ms=150)

    def send() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
            return client.sendmail("app@example.com", ["you@example.net"], message())
    senders = [in_thread(send) for _ in range(3)]
    noops = timed_noops(relay.port, 1.5)
    for thread, out in senders:
        thread.join(30)
        assert out == [{}]                         # accepted, after its own round trips
    assert max(noops) < 0.1 and statistics.median(noops) < 0.02, noops


def mail_from(relay) -> tuple[float, tuple[int, bytes]]:
    """How long MAIL took, and its reply."""
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=60) as client:
        client.ehlo("client.example")
        started = time.monotonic()
        reply = client.docmd("MAIL", "FROM:<app@example.com>")
        return time.monotonic() - started, reply


def warmed(relay) -> RunningRelay:
    """The worker's pool has its connection (made through the slow link) once a MAIL is accepted."""
    deadline = time.monotonic() + 30
    while mail_from(relay)[1][0] != 250:
        assert time.monotonic() < deadline, "the relay never accepted MAIL"
    return relay


def test_no_connection_within_acquire_timeout_is_451_and_the_rest_moves(slow_relay, monkeypatch):
    """A pool of one connection, each query 300 ms away, five senders at once: a MAIL that finds the
    connection taken for longer than `acquire_timeout` (0.2 s) is answered 451 4.3.0 within about that
    time, not after the queue of the others' queries; a NOOP elsewhere is answered at once throughout."""
    monkeypatch.setattr(store_postgres, "POOL_SIZE", 1)
    relay = warmed(slow_relay(delay_ms=300, acquire_timeout=0.2))
    senders = [in_thread(lambda: mail_from(relay)) for _ in range(5)]
    noops = timed_noops(relay.port, 1.0)
    for thread, _ in senders:
        thread.join(60)
    outcomes = [out[0] for _, out in senders]
    refused = [waited for waited, (code, text) in outcomes if code == 451 and text.startswith(b"4.3.0")]
    assert refused and max(refused) < 1.0, outcomes
    assert all(code in (250, 451) for _, (code, _) in outcomes), outcomes
    assert max(noops) < 0.1, noops


def test_a_database_that_stops_answering_costs_451_not_a_frozen_worker(slow_relay):
    """The link to the database hangs (the proxy holds every byte): a command that needs the store and
    finds no connection within `acquire_timeout` gets 451 4.3.0; sessions that need none are served; once
    the link is back, mail is accepted again without a restart."""
    relay = warmed(slow_relay(delay_ms=1, acquire_timeout=0.3))
    relay.proxy.pause()
    senders = [in_thread(lambda: mail_from(relay)) for _ in range(6)]
    noops = timed_noops(relay.port, 1.5)
    relay.proxy.resume()
    outcomes = []
    for thread, out in senders:
        thread.join(60)
        outcomes.append(out[0])
    refused = [waited for waited, (code, text) in outcomes if code == 451 and text.startswith(b"4.3.0")]
    assert len(refused) >= 2 and max(refused) < 1.5, outcomes          # the others had a connection: 250
    assert all(code in (250, 451) for _, (code, _) in outcomes), outcomes
    assert max(noops) < 0.1, noops
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
        assert client.sendmail("app@example.com", ["you@example.net"], message()) == {}


def test_a_database_outage_in_the_middle_of_a_load_loses_no_accepted_message(slow_relay, sink):
    """Senders keep going while the link to the database drops every connection and stays down for a
    second: meanwhile commands get 451 4.3.0, every message that got its 250 reaches the next hop, and
    mail is accepted again once the database is back, by the same worker."""
    relay = warmed(slow_relay(delay_ms=1, acquire_timeout=0.3, sink=sink))
    accepted, refused = [], []

    def sender() -> None:
        for _ in range(40):
            try:
                with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
                    client.sendmail("app@example.com", ["you@example.net"], message())
                    accepted.append(1)
            except smtplib.SMTPRecipientsRefused as e:
                refused.append(next(iter(e.recipients.values())))
            except smtplib.SMTPResponseException as e:
                refused.append((e.smtp_code, e.smtp_error))
            time.sleep(0.02)
    senders = [threading.Thread(target=sender) for _ in range(3)]
    for thread in senders:
        thread.start()
    time.sleep(0.5)
    relay.proxy.pause()
    relay.proxy.close_connections()
    time.sleep(1.0)
    relay.proxy.resume()
    for thread in senders:
        thread.join(120)
    assert refused and accepted, (len(accepted), refused)
    assert all(code == 451 and text.startswith(b"4.3.0") for code, text in refused), refused
    deadline = time.monotonic() + 60
    while len(sink.received) < len(accepted):
        assert time.monotonic() < deadline, (len(sink.received), len(accepted))
        time.sleep(0.1)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
        assert client.sendmail("app@example.com", ["you@example.net"], message()) == {}


def test_store_statements_per_message(relay_factory, sink, monkeypatch):
    """What one 4 KB message costs the store on the trusted path, submission and delivery, caches warm:
    each statement is a round trip on PostgreSQL. The README states the figure."""
    relay = relay_factory(roles=("submission", "delivery"), trust_cache_ttl=5.0,
                          delivery={"routes": {"example.net": ("127.0.0.1", sink.port)}})
    relay.add_tenant(networks=("127.0.0.0/8",), username=None)
    statements: list[str] = []
    worker = relay._thread.ident

    def counting(execute):
        def wrapper(self, sql, *args):
            if threading.get_ident() == worker:
                statements.append(sql.split()[0].upper())
            return execute(self, sql, *args)
        return wrapper
    monkeypatch.setattr(SqliteStore, "execute", counting(SqliteStore.execute))
    monkeypatch.setattr(SqliteStore, "executemany", counting(SqliteStore.executemany))
    body = message(body=("x" * 76 + "\r\n") * 52)          # 4 KB

    def send(count: int) -> None:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
            for _ in range(count):
                client.sendmail("app@example.com", ["you@example.net"], body)
        deadline = time.monotonic() + 30
        while len(sink.received) < sent[0] + count:
            assert time.monotonic() < deadline, relay.spool_rows("SELECT state, last_reply FROM recipients")
            time.sleep(0.05)
        sent[0] += count
        time.sleep(0.2)                # the bookkeeping committed within groupcommit.DELAY
    sent = [0]
    send(2)
    statements.clear()
    send(10)
    kinds = {kind: statements.count(kind) / 10 for kind in set(statements) - {"BEGIN", "COMMIT"}}
    # SELECT: the suppression look-up at RCPT (mail handed over in memory is not looked up again before
    # delivery); INSERT: the rate counter at MAIL (the only other one the message waits for), then in group
    # commits its sent row, the hourly counters of received and delivered, the event row; DELETE: the
    # soft-bounce count reset by a delivery.
    assert kinds == {"SELECT": 1, "INSERT": 5, "DELETE": 1}, kinds
