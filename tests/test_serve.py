"""`websofttt serve` as operators run it: worker processes, kill -9 durability, graceful SIGTERM."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from relay import eventloop
from relay.serve import owned_shards
from tests.conftest import PASSWORD, make_settings, WEBSOFTTT, free_port, message, run_cli, wait_for_port


@pytest.fixture
def node(tmp_path):
    """An initialised node directory with tenant acme, and a function that starts `serve` in it."""
    port, closed = free_port(), free_port()       # nothing listens on `closed`: deliveries stay deferred
    (tmp_path / "websofttt.toml").write_text(
        f'[node]\nname = "n1"\nworkers = 2\n[submission]\nlisten = ["127.0.0.1:{port}"]\nshutdown_grace = "5s"\n'
        f'[delivery]\nroutes = {{ "example.net" = "127.0.0.1:{closed}" }}\n'
        f'[inbound]\nlisten = ["127.0.0.1:{free_port()}"]\n[http]\nlisten = ["127.0.0.1:{free_port()}"]\n')
    for args in (["init"], ["tenant", "add", "acme", "--allow-from", "example.com"],
                 ["tenant", "accept-terms", "acme"]):
        assert run_cli(*args, cwd=tmp_path).returncode == 0
    assert run_cli("credential", "add", "acme", "app1", cwd=tmp_path, stdin=PASSWORD + "\n").returncode == 0
    procs: list[subprocess.Popen] = []
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)

    def start() -> subprocess.Popen:
        """Start `serve` as systemd would (Type=notify) and return once it said READY=1."""
        with open(tmp_path / "serve.log", "a") as log:
            proc = subprocess.Popen([WEBSOFTTT, "serve"], cwd=tmp_path, start_new_session=True, stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, "NOTIFY_SOCKET": notify.getsockname()})
        procs.append(proc)
        while notify.recv(100) != b"READY=1":     # a previous run's STOPPING=1 may come first
            pass
        wait_for_port(port)
        return proc
    start.port, start.dir, start.notify = port, tmp_path, notify
    start.log = lambda: (tmp_path / "serve.log").read_text()
    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    notify.close()


def client(node) -> smtplib.SMTP:
    c = smtplib.SMTP("127.0.0.1", node.port, timeout=10)
    c.starttls(context=ssl.create_default_context(cafile=str(node.dir / "var/tls/cert.pem")))
    c.login("app1", PASSWORD)
    return c


def queued_ids(node) -> set[str]:
    out = run_cli("queue", "list", "--json", cwd=node.dir)
    assert out.returncode == 0, out.stderr
    return {row["id"] for row in json.loads(out.stdout)}


def send(c: smtplib.SMTP) -> str:
    c.mail("app@example.com")
    c.rcpt("you@example.net")
    code, text = c.data(message())
    assert code == 250, text
    return text.decode().split()[-1]


def test_kill_9_right_after_250_loses_nothing(node):
    proc = node()
    c = client(node)
    acknowledged = {send(c) for _ in range(20)}
    os.killpg(proc.pid, signal.SIGKILL)     # parent and every worker, no chance to flush anything
    proc.wait()
    assert acknowledged <= queued_ids(node)


def test_workers_share_the_port_and_each_owns_a_shard(node):
    proc = node()
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    ids = {send(client(node)) for _ in range(30)}     # one connection each, taken by either worker
    assert ids == queued_ids(node)
    shards = sorted(p.name for p in (node.dir / "var/spool/n1").glob("shard-*.sqlite"))
    assert shards == ["shard-0.sqlite", "shard-1.sqlite"]
    assert all(i.endswith(".n1") for i in ids)


def test_a_stalled_worker_leaves_new_connections_to_the_other(node):
    """One queue of connections for all workers: a worker that stops accepting (here SIGSTOP, in life a
    long GC pause or a wedged call) does not hold the connections that would have been hashed to it."""
    proc = node()
    stalled, _ = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(stalled), signal.SIGSTOP)
    try:
        for _ in range(20):                          # per-worker queues: each would wait with chance 1/2
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
                assert s.recv(100).startswith(b"220 ")
    finally:
        os.kill(int(stalled), signal.SIGCONT)


def test_sigterm_lets_the_open_transaction_finish_then_exits_0(node):
    proc = node()
    c = client(node)
    c.mail("app@example.com")
    c.rcpt("you@example.net")
    idle = client(node)
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.5)
    code, text = c.data(message())          # the transaction that was open still completes
    assert code == 250
    assert idle.noop()[0] == 421            # an idle session was told 421 and closed
    assert proc.wait(15) == 0
    assert text.decode().split()[-1] in queued_ids(node)
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", node.port, timeout=2)


def test_a_second_serve_on_the_same_data_dir_is_refused(node):
    proc = node()
    out = subprocess.run([WEBSOFTTT, "serve"], cwd=node.dir, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert f"another 'websofttt serve' (pid {proc.pid}) already runs submission" in out.stderr
    assert "Traceback" not in out.stderr


def test_port_taken_by_another_program_is_a_clear_error(node):
    with socket.socket() as other:
        other.bind(("127.0.0.1", node.port))
        other.listen()
        out = subprocess.run([WEBSOFTTT, "serve"], cwd=node.dir, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{node.port}: Address already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_an_unknown_websofttt_loop_is_a_clear_error(node):
    out = run_cli("serve", cwd=node.dir, env={"WEBSOFTTT_LOOP": "tokio"})
    assert out.returncode == 2
    assert out.stderr == "error: WEBSOFTTT_LOOP='tokio': expected one of uvloop, asyncio\n"


def test_the_relay_under_test_runs_on_the_loop_websofttt_loop_chooses(relay):
    """What `make test` runs twice: the workers' code on uvloop, then on asyncio's own loop."""
    assert type(relay._loop).__module__.partition(".")[0] == eventloop.name()


def test_shards_without_a_worker_are_adopted(tmp_path):
    settings = make_settings(tmp_path / "var")
    settings = dataclasses.replace(settings, node=dataclasses.replace(settings.node, workers=2))
    settings.spool_dir.mkdir(parents=True)
    for i in range(5):                       # a node that ran 5 workers before
        (settings.spool_dir / f"shard-{i}.sqlite").touch()
    assert [p.name for p in owned_shards(settings, 0)] == ["shard-0.sqlite", "shard-2.sqlite", "shard-4.sqlite"]
    assert [p.name for p in owned_shards(settings, 1)] == ["shard-1.sqlite", "shard-3.sqlite"]


def test_copy_in_flight_at_kill_9_is_delivered_after_restart(node, sink):
    config = node.dir / "websofttt.toml"
    config.write_text(re.sub(r'"127\.0\.0\.1:\d+" }', f'"127.0.0.1:{sink.port}" }}', config.read_text()))
    sink.mode = "hang"                        # the next hop has the data but has not answered
    proc = node()
    queue_id = send(client(node))
    deadline = time.monotonic() + 15
    while sink.sessions == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    sink.mode = "accept"
    node()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not sink.received:
        time.sleep(0.1)
    assert [rcpts for _, rcpts, _ in sink.received] == [["you@example.net"]]    # at least once: here, once
    show = run_cli("queue", "show", queue_id, "--reason", "test", "--json", cwd=node.dir)
    assert [r["state"] for r in json.loads(show.stdout)["recipients"]] == ["delivered"]
