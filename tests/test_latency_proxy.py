"""The delaying proxy the benchmark puts between the relay and PostgreSQL (tests/latency_proxy.py): it adds
the round-trip time it is asked for, loses or reorders nothing, does not slow a transfer down to one
chunk per delay, and holds and releases data on demand."""
from __future__ import annotations

import os
import socket
import socketserver
import statistics
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.latency_proxy import DelayProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A plain TCP echo server on 127.0.0.1 that half-closes after the client did."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy_factory() -> Iterator:
    started: list[DelayProxy] = []

    def start(port: int, delay_ms: float) -> DelayProxy:
        proxy = DelayProxy("127.0.0.1", port, delay_ms)
        proxy.start()
        started.append(proxy)
        return proxy
    yield start
    for proxy in started:
        proxy.stop()


def _query_ms(url: str, count: int = 200) -> float:
    """Median milliseconds of `SELECT 1` on one connection."""
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(20):
            conn.execute("SELECT 1")
        times = []
        for _ in range(count):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@pytest.mark.serial          # a round-trip time: busy tests beside it would skew it
def test_round_trip_grows_by_the_delay(postgres, pg_url, proxy_factory) -> None:
    proxy = proxy_factory(postgres.port, 1.0)
    through = pg_url.replace(f":{postgres.port}/", f":{proxy.port}/")
    direct, delayed = _query_ms(pg_url), _query_ms(through)
    assert 0.95 <= delayed - direct <= 1.4, (direct, delayed)


def test_large_transfer_is_intact_and_not_held_up(echo_port, proxy_factory) -> None:
    """10 MB each way arrive byte for byte; with 100 ms each way, the whole exchange takes about one round trip
    plus the copying, where a proxy sleeping per chunk in series would take 0.1 s for every one of many chunks."""
    proxy = proxy_factory(echo_port, 200.0)
    payload = os.urandom(10 * 1024 * 1024)
    received = bytearray()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        started = time.monotonic()

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send)
        sender.start()
        while chunk := sock.recv(1 << 20):
            received += chunk
        elapsed = time.monotonic() - started
        sender.join()
    assert bytes(received) == payload
    assert elapsed < 2.0, elapsed


def test_pause_holds_data_and_resume_releases_it(echo_port, proxy_factory) -> None:
    proxy = proxy_factory(echo_port, 1.0)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"one")
        assert sock.recv(100) == b"one"
        proxy.pause()
        sock.sendall(b"two")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        proxy.resume()
        sock.settimeout(5)
        assert sock.recv(100) == b"two"


def test_close_connections_resets_them_and_accepts_new_ones(echo_port, proxy_factory) -> None:
    proxy = proxy_factory(echo_port, 1.0)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"one")
        assert sock.recv(100) == b"one"
        proxy.close_connections()
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"again")
        assert sock.recv(100) == b"again"
