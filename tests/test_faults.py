"""Faults around the relay: a next hop whose TLS handshake fails, a full spool disk, and the roles as
separate processes sharing one store."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import threading
import time

import pytest

from tests.conftest import RunningRelay, free_port, make_settings, message, prepare
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
