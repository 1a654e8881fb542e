"""Several nodes on one PostgreSQL store: two `websofttt serve` processes, each with its own data dir and
spool, one database. What one node writes (an unsubscribe, a suspension, rate-limit counts) binds the
other at once; a token issued by one resolves on the other; both sign with the one shared DKIM key."""
from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import dkim
import pytest

from tests.conftest import PASSWORD, WEBSOFTTT, free_port, message, run_cli, wait_for_port
from tests.postgres import start_or_skip


class Node:
    def __init__(self, root: Path, name: str, url: str, sink_port: int):
        self.dir = root / name
        self.dir.mkdir()
        self.port, self.http = free_port(), free_port()
        (self.dir / "websofttt.toml").write_text(
            f'[node]\nname = "{name}"\nworkers = 1\n[store]\nurl = "{url}"\n'
            f'[submission]\nlisten = ["127.0.0.1:{self.port}"]\nshutdown_grace = "2s"\n'
            f'[delivery]\nroutes = {{ "example.net" = "127.0.0.1:{sink_port}" }}\n'
            f'[inbound]\nlisten = ["127.0.0.1:{free_port()}"]\n'
            f'[http]\nlisten = ["127.0.0.1:{self.http}"]\npublic_url = "http://127.0.0.1:{self.http}"\n')
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        done = run_cli(*args, cwd=self.dir, stdin=stdin)
        assert done.returncode == 0, (args, done.stderr)
        return done

    def start(self) -> None:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(self.dir / "notify.sock"))
        notify.settimeout(30)
        with open(self.dir / "serve.log", "a") as log:
            self.proc = subprocess.Popen([WEBSOFTTT, "serve"], cwd=self.dir, start_new_session=True, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         env={**os.environ, "NOTIFY_SOCKET": notify.getsockname()})
        while notify.recv(100) != b"READY=1":
            pass
        notify.close()
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def client(self, timeout: float = 10) -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.port, timeout=timeout)
        c.starttls(context=ssl.create_default_context(cafile=str(self.dir / "var/tls/cert.pem")))
        c.login("app1", PASSWORD)
        return c

    def mail(self, recipient: str = "you@example.net") -> tuple[int, bytes]:
        """MAIL, RCPT, DATA; the first reply that is not a success."""
        with self.client() as c:
            code, text = c.mail("app@example.com")
            if code != 250:
                return code, text
            code, text = c.rcpt(recipient)
            if code != 250:
                return code, text
            return c.data(message())


@pytest.fixture
def nodes(tmp_path, pg_url, sink):
    a, b = Node(tmp_path, "a", pg_url, sink.port), Node(tmp_path, "b", pg_url, sink.port)
    a.cli("init")
    b.cli("init")                                    # against a store that is set up: keeps what is there
    a.cli("tenant", "add", "acme", "--allow-from", "example.com", "--rate", "5/1h")
    b.cli("tenant", "accept-terms", "acme")
    a.cli("credential", "add", "acme", "app1", stdin=PASSWORD + "\n")
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


def wait_for(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return found


def test_two_nodes_share_suppressions_tokens_suspension_and_rate(nodes, sink):
    a, b = nodes
    assert a.cli("dkim", "dns").stdout.split("Publish")[0] == b.cli("dkim", "dns").stdout.split("Publish")[0]

    # A copy sent through node A carries a token and the shared key's signature ...
    assert a.mail()[0] == 250
    copy = wait_for(lambda: sink.received)[0][2]
    assert dkim.verify(copy, dnsfunc=_dns_from(a.cli("dkim", "dns").stdout))
    token = re.search(rb"/u/([A-Za-z0-9_-]+)>", copy).group(1).decode()

    # ... which node B resolves: a one-click unsubscribe posted to B ...
    request = urllib.request.Request(f"http://127.0.0.1:{b.http}/u/{token}", data=b"List-Unsubscribe=One-Click")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200

    # ... and node A refuses the recipient at its next RCPT.
    code, text = a.mail()
    assert (code, text[:5]) == (550, b"5.7.1"), text

    # Rate: 5 messages per hour for the tenant, counted at MAIL across both nodes (two used above).
    codes = [a.mail("x@example.net")[0], b.mail("y@example.net")[0], b.mail("z@example.net")[0]]
    assert codes == [250, 250, 250]
    assert a.mail("w@example.net")[0] == 451 and b.mail("w@example.net")[0] == 451

    # A suspension made through node B's CLI is refused on both, within submission.trust_cache_ttl (5 s).
    b.cli("tenant", "suspend", "acme", "--reason", "investigating")
    for node in (a, b):
        code, text = wait_for(lambda: (lambda reply: reply if reply[0] == 550 else None)(node.mail()), 10)
        assert text[:5] == b"5.7.1" and b"suspended" in text, text


def _dns_from(zone: str):
    """dkimpy's DNS lookup answered from `dkim dns` output (no public DNS here)."""
    records = {}
    for line in zone.splitlines():
        m = re.match(r'(\S+)\. IN TXT (.*)', line)
        if m:
            records[m.group(1).encode() + b"."] = "".join(re.findall(r'"([^"]*)"', m.group(2))).encode()
    return lambda name, timeout=5: records.get(name)


@pytest.mark.timeout(120)        # a server of its own, two restarts and the pool's 10 s wait
def test_a_store_outage_is_answered_451_and_service_resumes(tmp_path, sink):
    """The database restarts under a running relay: AUTH gets 451 4.3.0 (try again) meanwhile, nothing
    crashes, and the same processes accept and deliver mail once it is back (the pool reconnects)."""
    server = start_or_skip()
    node = Node(tmp_path, "a", server.new_database(), sink.port)
    try:
        node.cli("init")
        node.cli("tenant", "add", "acme", "--allow-from", "example.com")
        node.cli("tenant", "accept-terms", "acme")
        node.cli("credential", "add", "acme", "app1", stdin=PASSWORD + "\n")
        node.start()
        assert node.mail()[0] == 250
        wait_for(lambda: len(sink.received) == 1)
        server.halt()
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:     # AUTH needs the store: no
            node.client(timeout=30)                                          # connection within 2 s
        assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (451, b"4.3.0")
        server.start()
        assert wait_for(lambda: node.mail()[0] == 250)
        wait_for(lambda: len(sink.received) == 2)
        assert node.proc.poll() is None
    finally:
        node.stop()
        server.stop()
