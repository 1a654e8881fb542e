"""A private PostgreSQL server for the tests: a throwaway cluster (initdb) on a loopback port, started
from the Debian packages that .ci/run installs, run as the `postgres` user when the tests run as root
(PostgreSQL refuses root), stopped by pid at the end. Each test gets a database of its own.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

USER = "websofttt"


def _binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class PostgresServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="websofttt-pg-"))
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.databases = 0

    def start(self) -> None:
        """Raises RuntimeError with the reason when no server can be started here."""
        initdb, postgres = _binary("initdb"), _binary("postgres")
        if not initdb or not postgres:
            raise RuntimeError("no PostgreSQL server binaries (Debian package postgresql; .ci/run installs it)")
        run_as = {}
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no postgres user to run the server as") from None
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            run_as = {"user": account.pw_uid, "group": account.pw_gid}
        data = self.dir / "data"
        if not data.exists():
            done = subprocess.run([initdb, "-D", str(data), "-U", USER, "-A", "trust", "--no-sync", "-E", "UTF8"],
                                  capture_output=True, text=True, **run_as)
            if done.returncode:
                raise RuntimeError(f"initdb failed: {done.stderr.strip()[-300:]}")
        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        self.process = subprocess.Popen(
            [postgres, "-D", str(data), "-p", str(self.port), "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "server.log", "w"), **run_as)
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "server.log").read_text()[-300:]
                    raise RuntimeError(f"the PostgreSQL server did not start: {log}") from None
                time.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        self.databases += 1
        name = f"t{os.getpid()}_{self.databases}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def halt(self) -> None:
        """Stop the server (fast shutdown: sessions are cut); `start()` brings it back on the same port."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_or_skip() -> PostgresServer:
    """A started server, or the test is skipped with the reason none can start here."""
    server = PostgresServer()
    try:
        server.start()
    except RuntimeError as e:
        server.stop()
        pytest.skip(f"PostgreSQL store tests skipped: {e}")
    return server
