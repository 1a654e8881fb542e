"""Shared fixtures: a real submission worker on ephemeral loopback ports, real TLS, a real SQLite store, and
a private PostgreSQL server for the tests of the shared store."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from policy import credentials, tenants, terms as terms_versions   # `terms`: add_tenant's flag
from policy.keys import generate_dkim_key, generate_tls_cert
from policy.settings import Node, Paths, Settings, Submission, load_settings
from policy.engines import open_store
from policy.store import Store
from policy.store_sqlite import SqliteStore
from policy.tokens import ensure_secret
from relay import eventloop
from relay.cli.node import starters
from relay.serve import worker_main
from tests.postgres import start_or_skip

PASSWORD = "correct horse battery"
WEBSOFTTT = str(Path(sys.executable).parent / "websofttt")


def pytest_configure(config) -> None:
    """A wrong WEBSOFTTT_LOOP stops the run before any test, instead of failing every relay test."""
    try:
        eventloop.name()
    except eventloop.LoopError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_report_header(config) -> str:
    """The loop the relay's code runs on in this run."""
    return f"event loop: {eventloop.name()} (WEBSOFTTT_LOOP={os.environ.get('WEBSOFTTT_LOOP', '')!r})"


def make_settings(data_dir: Path, delivery: dict | None = None, dkim: dict | None = None, http: dict | None = None,
                  policy: dict | None = None, webhooks: dict | None = None, **submission) -> Settings:
    """Defaults with listeners on ephemeral ports, and `submission` / `delivery` / `dkim` / `http` / `policy` /
    `webhooks` overrides."""
    base = load_settings(None)
    sub = dataclasses.replace(Submission(listen=(("127.0.0.1", 0),), tls_listen=(("127.0.0.1", 0),),
                                         trust_cache_ttl=0, shutdown_grace=2), **submission)
    return dataclasses.replace(base, paths=Paths(data_dir), submission=sub, node=Node("test", 1),
                               delivery=dataclasses.replace(base.delivery, **(delivery or {})),
                               dkim=dataclasses.replace(base.dkim, **(dkim or {})),
                               http=dataclasses.replace(base.http, **({"listen": (("127.0.0.1", 0),)} | (http or {}))),
                               policy=dataclasses.replace(base.policy, **(policy or {})),
                               webhooks=dataclasses.replace(base.webhooks, **(webhooks or {})),
                               inbound=dataclasses.replace(base.inbound, listen=(("127.0.0.1", 0),)))


def prepare(settings: Settings) -> None:
    """What `websofttt init` makes: store, DKIM key, TLS certificate."""
    store = open_store(settings)
    store.migrate()
    ensure_secret(store, None)
    store.close()
    generate_dkim_key(settings.dkim_key)
    generate_tls_cert(settings.tls_cert, settings.tls_key, settings.provider.hostname)


class RunningRelay:
    """One submission worker running in a thread with its own event loop, the one production would run
    (WEBSOFTTT_LOOP: uvloop unless asyncio is asked for)."""

    def __init__(self, settings: Settings, roles: tuple[str, ...] = ("submission",), resolver=None):
        self.settings = settings
        self.roles = roles
        self.resolver = resolver
        self.store = open_store(settings)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: eventloop.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "submission worker did not start"

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        started = self._loop.create_future()
        task = asyncio.create_task(worker_main(self.settings, 0, self.roles, self._stop, started, self.resolver,
                                               starters()))
        self.ports = await started
        self.port, self.tls_port = self.ports["submission"] if "submission" in self.roles else (None, None)
        self._ready.set()
        await task

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(40)
        self.store.close()

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.settings.tls_cert))

    def connect(self, tls: bool = True, login: tuple[str, str] | None = ("app1", PASSWORD)) -> smtplib.SMTP:
        """A real smtplib client: STARTTLS verified against the relay's certificate, then AUTH."""
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        client.ehlo("client.example")
        if tls:
            client.starttls(context=self.client_context())
            client.ehlo("client.example")
        if login:
            client.login(*login)
        return client

    def add_tenant(self, tenant_id: str = "acme", *, terms: bool = True, networks: tuple[str, ...] = (),
                   rate: str | None = None, username: str | None = "app1", name: str | None = None) -> None:
        tenants.add(self.store, tenant_id, ["example.com"], list(networks), rate, name)
        if terms:
            terms_versions.accept(self.store, self.settings.provider.terms_version, tenant_id, None)
        if username:
            credentials.add(self.store, tenant_id, username, PASSWORD)

    def spool_rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        import sqlite3
        path = self.settings.spool_dir / "shard-0.sqlite"
        with sqlite3.connect(path) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture
def relay_factory(tmp_path):
    running: list[RunningRelay] = []

    def start(roles: tuple[str, ...] = ("submission",), delivery: dict | None = None, dkim: dict | None = None,
              resolver=None, http: dict | None = None, policy: dict | None = None, webhooks: dict | None = None,
              **submission) -> RunningRelay:
        settings = make_settings(tmp_path / "var", delivery, dkim, http, policy, webhooks, **submission)
        prepare(settings)
        relay = RunningRelay(settings, roles, resolver)
        running.append(relay)
        return relay
    yield start
    for relay in running:
        relay.stop()


@pytest.fixture
def relay(relay_factory) -> RunningRelay:
    """A running worker with tenant `acme` (From example.com, terms accepted, user app1)."""
    r = relay_factory()
    r.add_tenant()
    return r


def message(subject: str = "hello", sender: str = "App <app@example.com>", extra: str = "",
            body: str = "Hi there.\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: you@example.net\r\nSubject: {subject}\r\n{extra}\r\n{body}").encode()


_GIVEN: set[int] = set()


def free_port() -> int:
    """A free loopback port never given before in this process: one test's listeners never share one
    (the relay refuses two listeners on one address)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def wait_for_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def at_once(*calls: Callable[[], object], timeout: float = 60) -> None:
    """Run each call in a thread of its own, all started before any is waited for; wait for them all."""
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)


def run_cli(*args: str, cwd: Path, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([WEBSOFTTT, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


class Sink:
    """An SMTP next hop whose answer to DATA is `self.mode`; counts sessions and concurrency. It offers
    PIPELINING (RFC 2920) as real MTAs do, unless `pipelining` is False, and 8BITMIME (RFC 6152) unless
    `eightbit` is False."""

    def __init__(self, mode: str = "accept", pipelining: bool = True, eightbit: bool = True):
        self.mode = mode
        self.pipelining = pipelining
        self.eightbit = eightbit
        self.received: list[tuple[str, list[str], bytes]] = []
        self.mail_options: list[list[str]] = []       # the MAIL parameters of each copy received
        self.sessions = self.active = self.peak = 0
        self.lock = threading.Lock()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if not self.eightbit:
            responses = [r for r in responses if r[4:] != "8BITMIME"]
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    async def handle_DATA(self, server, session, envelope):
        if self.mode == "hang":
            await asyncio.sleep(30)
        if self.mode == "slow":
            await asyncio.sleep(0.3)
        if self.mode == "drop":
            server.transport.close()
            return None
        if self.mode == "defer":
            return "451 4.3.0 try again later"
        if self.mode == "reject":
            return "550 5.1.1 no such user here"
        if self.mode == "policy":
            return "550 5.7.1 message refused as spam"
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        self.mail_options.append(list(envelope.mail_options))
        return "250 2.0.0 ok"


class CountingSMTP(SMTP):
    def connection_made(self, transport):
        sink = self.event_handler
        with sink.lock:
            sink.sessions += 1
            sink.active += 1
            sink.peak = max(sink.peak, sink.active)
        super().connection_made(transport)

    def connection_lost(self, exc):
        with self.event_handler.lock:
            self.event_handler.active -= 1
        super().connection_lost(exc)


class SinkController(Controller):
    def factory(self):
        return CountingSMTP(self.handler, enable_SMTPUTF8=True)


def serve_sink(handler: Sink, before_stop: Callable[[], object] = lambda: None):
    """Run `handler` as a real aiosmtpd next hop on a free loopback port while the caller's fixture lasts."""
    handler.port = free_port()
    controller = SinkController(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    handler.sessions = 0      # the controller's own start-up probe is not a delivery
    yield handler
    before_stop()
    controller.stop()


@pytest.fixture
def sink():
    yield from serve_sink(Sink())


@pytest.fixture(scope="session")
def postgres():
    """The private PostgreSQL server; its tests are skipped, with the reason, when none can start here."""
    server = start_or_skip()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres) -> str:
    """A fresh database on the private server."""
    return postgres.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path) -> Store:
    """The same store tests on both engines, migrated and empty."""
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "store.sqlite")
    else:
        from policy.store_postgres import PostgresStore
        store = PostgresStore(request.getfixturevalue("pg_url"))
    store.migrate()
    yield store
    store.close()
