"""Faults around the relay: a next hop whose TLS handshake fails, a full spool disk, and the roles as
separate processes sharing one store."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import smtplib
import sqlite3
import ssl
import subprocess
import threading
import time
from contextlib import closing

import pytest

from relay import eventloop
from tests.conftest import (PASSWORD, WEBSOFTTT, RunningRelay, at_once, free_port, make_settings, message, prepare,
                            run_cli, wait_for_port)
from tests.test_delivery import start, submit, wait_states


class BrokenTlsHop:
    """A next hop that offers STARTTLS and then answers the handshake with plain text; without STARTTLS
    it takes the message. Counts handshakes tried and messages taken."""

    def __init__(self) -> None:
        self.port = free_port()
        self.tls_tries = 0
        self.received: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(5)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._session, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 broken-tls.example ESMTP\r\n")
        data: list[bytes] = []
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-broken-tls.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
                elif verb == b"STAR":
                    self.tls_tries += 1
                    writer.write(b"220 go ahead\r\nthis is not TLS at all\r\n")
                    await writer.drain()
                    break
                elif verb == b"DATA":
                    writer.write(b"354 go on\r\n")
                    await writer.drain()
                    while (chunk := await reader.readline()) not in (b".\r\n", b""):
                        data.append(chunk)
                    self.received.append(b"".join(data))
                    writer.write(b"250 2.0.0 taken\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        finally:
            writer.close()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _shutdown(self) -> None:
        self.server.close()
        sessions = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)


def test_a_failed_tls_handshake_falls_back_to_plaintext(relay_factory):
    hop = BrokenTlsHop()
    try:
        relay = start(relay_factory, type("S", (), {"port": hop.port})())
        rows = wait_states(relay, submit(relay), {"delivered"})
        assert rows[0][2] == "250 2.0.0 taken"
        assert hop.tls_tries == 1 and len(hop.received) == 1 and b"DKIM-Signature" in hop.received[0]
    finally:
        hop.stop()


@pytest.fixture
def small_spool(tmp_path):
    """Settings whose spool directory is a 2 MiB tmpfs (needs root, as in CI; skipped otherwise)."""
    settings = make_settings(tmp_path / "var")
    prepare(settings)
    settings.spool_dir.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(settings.spool_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    yield settings
    subprocess.run(["umount", "-l", str(settings.spool_dir)], check=False)


def test_a_full_spool_disk_refuses_with_452_431_and_loses_nothing(small_spool, sink):
    sink.mode = "defer"
    settings = dataclasses.replace(small_spool, delivery=dataclasses.replace(
        small_spool.delivery, routes={"example.net": ("127.0.0.1", sink.port)}, retry_schedule=(0.5,)))
    relay = RunningRelay(settings, ("submission", "delivery"))
    try:
        relay.add_tenant()
        acknowledged = [submit(relay) for _ in range(3)]
        filler = settings.spool_dir / "filler"
        with open(filler, "wb") as f:                        # leave about 100 KiB
            free = os.statvfs(settings.spool_dir)
            f.write(b"\0" * max(0, free.f_bavail * free.f_frsize - 100 * 1024))
        client = relay.connect()
        client.mail("app@example.com")
        client.rcpt("you@example.net")
        code, text = client.data(message(body=("x" * 76 + "\r\n") * 5000))       # 390 KB
        assert (code, text[:5]) == (452, b"4.3.1"), text
        client.quit()
        filler.unlink()                                      # space returns: service resumes
        acknowledged.append(submit(relay))
        sink.mode = "accept"
        for queue_id in acknowledged:
            wait_states(relay, queue_id, {"delivered"})
        assert len(sink.received) == len(acknowledged) == 4
    finally:
        relay.stop()


def test_a_spool_batch_that_reads_first_survives_a_write_from_another_process(tmp_path):
    """Purge reads before it deletes; under `serve --only` the submission process may commit to the same shard
    in between. The batch holds the write lock from its start, so that writer waits instead of the batch
    failing at once with "database is locked"."""
    from relay.spool import Spool
    path = tmp_path / "shard-0.sqlite"

    async def scenario() -> None:
        spool = Spool(path)
        other = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        writer = threading.Thread(target=other.execute, args=(
            "INSERT INTO messages (id, tenant, mail_from, size, received) VALUES ('other', 'acme', '', 0, 'now')",))

        def read_then_write(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT count(*) FROM messages").fetchone()
            writer.start()
            writer.join(0.3)                        # the other process commits now, if it can
            conn.execute("DELETE FROM messages WHERE id = 'none'")
        try:
            await spool._submit(read_then_write)
        finally:
            spool.close()
            writer.join(10)
            other.close()
    eventloop.run(scenario())
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT id FROM messages").fetchall() == [("other",)]


def test_workers_opening_a_new_mailbox_at_once_all_start(tmp_path):
    """Every inbound worker opens the node's mailbox at start; on a new file each found the claims column
    missing, and the second ALTER failed ("duplicate column name"), so that worker died and restarted."""
    from inbound.mailbox import Mailbox
    for attempt in range(15):
        path = tmp_path / f"mailbox-{attempt}.sqlite"
        start, errors, boxes = threading.Barrier(6), [], []

        def open_it() -> None:
            start.wait()
            try:
                boxes.append(Mailbox(path, 86400))
            except sqlite3.Error as e:
                errors.append(repr(e))
        at_once(*[open_it] * 6)
        for box in boxes:
            box.close()
        assert errors == [] and len(boxes) == 6


def test_roles_as_separate_processes_share_one_store(tmp_path, sink):
    """submission, delivery and inbound as three `serve --only` processes on one SQLite store, under load."""
    port, inbound_port = free_port(), free_port()
    (tmp_path / "websofttt.toml").write_text(
        f'[node]\nname = "n1"\nworkers = 2\n[submission]\nlisten = ["127.0.0.1:{port}"]\n'
        f'[delivery]\nroutes = {{ "example.net" = "127.0.0.1:{sink.port}" }}\n'
        f'[inbound]\nlisten = ["127.0.0.1:{inbound_port}"]\n')
    for args in (["init"], ["tenant", "add", "acme", "--allow-from", "example.com"], ["tenant", "accept-terms", "acme"]):
        assert run_cli(*args, cwd=tmp_path).returncode == 0
    assert run_cli("credential", "add", "acme", "app1", cwd=tmp_path, stdin=PASSWORD + "\n").returncode == 0
    log = open(tmp_path / "serve.log", "w")
    procs = [subprocess.Popen([WEBSOFTTT, "serve", "--only", role], cwd=tmp_path, start_new_session=True,
                              stdout=log, stderr=subprocess.STDOUT) for role in ("submission", "delivery", "inbound")]
    try:
        wait_for_port(port)
        wait_for_port(inbound_port)
        context = ssl.create_default_context(cafile=str(tmp_path / "var/tls/cert.pem"))

        def submit_many(n: int) -> None:
            for i in range(n):
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                    c.starttls(context=context)
                    c.login("app1", PASSWORD)
                    assert c.sendmail("app@example.com", [f"r{i}@example.net"], message()) == {}

        def inbound_many(n: int) -> None:
            for i in range(n):
                with smtplib.SMTP("127.0.0.1", inbound_port, timeout=30) as c:
                    c.sendmail("someone@example.org", ["postmaster@websofttt.com"],
                               b"From: someone@example.org\r\nSubject: note %d\r\n\r\nhi\r\n" % i)

        at_once(*[lambda: submit_many(20)] * 3, lambda: inbound_many(20), timeout=120)
        deadline = time.monotonic() + 60
        while len(sink.received) < 60 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(sink.received) == 60
        with closing(sqlite3.connect(tmp_path / "var/inbound/n1.sqlite")) as conn:
            assert conn.execute("SELECT count(*), sum(processed) FROM inbound").fetchone() == (20, 20)
        assert all(p.poll() is None for p in procs)
        text = (tmp_path / "serve.log").read_text()
        assert "locked" not in text and '"level": "error"' not in text
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(30)
        log.close()
