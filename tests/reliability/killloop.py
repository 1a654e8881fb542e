"""kill -9 loops against a real `websofttt serve`: what was answered 250 must survive, once.

Shared by tests/test_crash_safety.py (a few kills, in `make test`) and
tests/reliability/test_crash_safety_long.py (many kills, `make reliability`).

- `Node`: an initialised node directory (2 workers) whose delivery goes to a recording sink
  (tests.conftest.SinkController) on a free port, retried every second; `start()` runs `serve` in its
  own session as systemd would (NOTIFY_SOCKET, waits for READY=1), `kill()` is `kill -9` of the whole
  process group.
- `kill_loop`: start serve; K times let the load run a random 0.3-2.0 s (counted from its first 250
  after the start), kill -9, look at the data dir, restart.
- `submission_run`: client threads submit messages (STARTTLS; half with AUTH, half as the tenant's
  trusted network), each with a unique marker (X-Test-Seq) and 1-3 recipients of its own, and remember
  every message answered 250 with its queue id; meanwhile serve is killed K times and restarted. After each kill, before the
  restart, the spool is read: every acknowledged message must be in it, and the copies the sink
  already has whose recipient row is still pending are "in flight" (they will be sent again: the
  allowed duplicates). At the end every acknowledged recipient must be at the sink, with its marker.
- `inbound_run`: copies are delivered first; client threads send unsubscribe replies to
  `unsubscribe+TOKEN@` and RFC 3464 hard bounces (5.1.1) to `bounce+TOKEN@` (tokens from the copies
  at the sink), one per token, retried until answered 250; serve is killed K times. At the end every
  acknowledged one must be a suppression (`websofttt suppression list --json`): unsubscribe for the
  tenant, hard_bounce globally. Rows of the inbound mailbox still unprocessed at a kill are "in flight";
  a message acted on twice (two bounce records) is explained only if it was in flight at a kill.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import random
import re
import signal
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from pathlib import Path

from tests.conftest import PASSWORD, WEBSOFTTT, Sink, SinkController, free_port, run_cli, wait_for_port

TENANT = "acme"
PENDING = ("queued", "deferred")
_SEQ = re.compile(rb"^X-Test-Seq:[ \t]*(\S+)", re.I | re.M)
_QUEUE_ID = re.compile(rb"\(WebSoftTT Relay\) with \w+ id (\S+)")
_UNSUB = re.compile(rb"<mailto:unsubscribe\+([a-z2-7]+)@websofttt\.com\?subject=unsubscribe>")
_VERP = re.compile(r"bounce\+([a-z2-7]+)@bounces\.websofttt\.com")


# ---------------------------------------------------------------- the sink and the node

class RecordingSink(Sink):
    """Accepts everything; records the copy *before* answering, then waits up to `max_delay` s, so a kill
    often falls between the next hop's acceptance and the relay's commit (the window duplicates come from)."""

    def __init__(self, max_delay: float = 0.0):
        super().__init__()
        self.max_delay = max_delay

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        if self.max_delay:
            await asyncio.sleep(random.uniform(0, self.max_delay))
        return "250 2.0.0 ok"

    def snapshot(self) -> list[tuple[str, list[str], bytes]]:
        with self.lock:
            return list(self.received)


@dataclasses.dataclass(frozen=True)
class Copy:
    """One copy as the sink received it."""
    queue_id: str
    recipient: str
    marker: str | None
    token: str | None          # the VERP token (envelope sender), the same as List-Unsubscribe's
    unsubscribe: str | None    # the token of List-Unsubscribe's mailto


def parse_copy(mail_from: str, rcpts: list[str], data: bytes) -> Copy:
    head = data.split(b"\r\n\r\n", 1)[0]
    seq, qid, unsub = _SEQ.search(head), _QUEUE_ID.search(head), _UNSUB.search(head)
    verp = _VERP.fullmatch(mail_from or "")
    return Copy(qid.group(1).decode() if qid else "?", rcpts[0].lower(), seq.group(1).decode() if seq else None,
                verp.group(1) if verp else None, unsub.group(1).decode() if unsub else None)


class Node:
    """An initialised node directory with tenant acme (app1), 2 workers, delivery routed to a recording sink."""

    def __init__(self, directory: Path, sink_delay: float = 0.02, workers: int = 2):
        self.dir = directory
        self.port, self.inbound_port, self.http_port = free_port(), free_port(), free_port()
        self.sink = RecordingSink(sink_delay)
        self.sink.port = free_port()
        self.controller = SinkController(self.sink, hostname="127.0.0.1", port=self.sink.port)
        self.controller.start()
        (directory / "websofttt.toml").write_text(
            f'[node]\nname = "n1"\nworkers = {workers}\n'
            f'[submission]\nlisten = ["127.0.0.1:{self.port}"]\nshutdown_grace = "5s"\n'
            f'[delivery]\nroutes = {{ "example.net" = "127.0.0.1:{self.sink.port}" }}\nretry_schedule = ["1s"]\n'
            f'connect_timeout = "5s"\ncommand_timeout = "10s"\ndata_timeout = "10s"\n'
            f'[inbound]\nlisten = ["127.0.0.1:{self.inbound_port}"]\nmax_connections_per_ip = 200\n'
            f'[http]\nlisten = ["127.0.0.1:{self.http_port}"]\n'
            # a test run bounces half of what it delivered: no automatic suspension in the middle of it
            f'[policy]\nbounce_rate = 1.0\ncomplaint_rate = 1.0\n')
        for args in (["init"], ["tenant", "add", TENANT, "--allow-from", "example.com", "--rate", "10000000/1h",
                      "--network", "127.0.0.1/32"],
                     ["tenant", "accept-terms", TENANT]):
            out = run_cli(*args, cwd=directory)
            assert out.returncode == 0, out.stderr
        out = run_cli("credential", "add", TENANT, "app1", cwd=directory, stdin=PASSWORD + "\n")
        assert out.returncode == 0, out.stderr
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(directory / "notify.sock"))
        self.notify.settimeout(60)
        self.proc: subprocess.Popen | None = None
        self.starts: list[float] = []       # seconds from Popen to READY=1 and the port answering

    @property
    def cafile(self) -> str:
        return str(self.dir / "var/tls/cert.pem")

    def start(self) -> subprocess.Popen:
        """`serve` as systemd runs it (Type=notify), in its own session; returns once READY=1 and listening."""
        began = time.monotonic()
        with open(self.dir / "serve.log", "a") as log:
            self.proc = subprocess.Popen([WEBSOFTTT, "serve"], cwd=self.dir, start_new_session=True, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         env={**os.environ, "NOTIFY_SOCKET": self.notify.getsockname()})
        while self.notify.recv(100) != b"READY=1":      # a STOPPING=1 of an earlier run may come first
            pass
        wait_for_port(self.port)
        wait_for_port(self.inbound_port)
        self.starts.append(time.monotonic() - began)
        return self.proc

    def kill(self) -> None:
        """kill -9 of the parent and every worker at once: nothing gets a chance to flush."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
            # a worker the parent was about to replace could outlive it: wait until the group is empty
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    break
                time.sleep(0.02)
        self.proc = None

    def close(self) -> None:
        self.kill()
        self.controller.stop()
        self.notify.close()

    def log_tail(self, lines: int = 40) -> str:
        path = self.dir / "serve.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def log_errors(self) -> list[str]:
        """Lines of serve.log at level ERROR or with a traceback (kills make some expected ones: callers judge)."""
        path = self.dir / "serve.log"
        if not path.exists():
            return []
        return [line for line in path.read_text(errors="replace").splitlines()
                if '"level": "ERROR"' in line or "Traceback" in line]

    # -------- reading the data dir while no serve runs (or read-only while one does)

    def spool_rows(self) -> tuple[set[str], dict[tuple[str, str], str]]:
        """(queue ids of every message, {(queue id, recipient): state}) over this node's shards."""
        messages: set[str] = set()
        states: dict[tuple[str, str], str] = {}
        for path in sorted((self.dir / "var/spool/n1").glob("shard-*.sqlite")):
            with _read(path) as conn:
                messages |= {row[0] for row in conn.execute("SELECT id FROM messages")}
                states |= {(q, r.lower()): s for q, r, s in
                           conn.execute("SELECT queue_id, recipient, state FROM recipients")}
        return messages, states

    def mailbox_rows(self) -> dict[str, int]:
        """{inbound id: processed} of this node's inbound mailbox."""
        path = self.dir / "var/inbound/n1.sqlite"
        if not path.exists():
            return {}
        with _read(path) as conn:
            return dict(conn.execute("SELECT id, processed FROM inbound").fetchall())

    def bounce_sources(self) -> collections.Counter:
        """How many bounce records each inbound message made (more than one: it was acted on twice)."""
        with _read(self.dir / "var/websofttt.sqlite") as conn:
            return collections.Counter(row[0] for row in conn.execute(
                "SELECT source FROM bounces WHERE source LIKE 'inbound %'"))

    def suppressions(self) -> set[tuple[str, str, str]]:
        """(address, scope, cause) as the operator sees them."""
        out = run_cli("suppression", "list", "--json", "--reason", "test", cwd=self.dir)
        assert out.returncode == 0, out.stderr
        return {(row["address"], row["scope"], row["cause"]) for row in json.loads(out.stdout)}


class _read:
    """A read-only connection to one SQLite file of the node (WAL: readable while serve writes)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        return self.conn

    def __exit__(self, *exc) -> None:
        self.conn.close()


# ---------------------------------------------------------------- the kill loop

def settle(sink: RecordingSink, timeout: float = 10.0) -> None:
    """After a kill: let the sink see every connection close and finish what it had already received."""
    deadline = time.monotonic() + timeout
    while sink.active and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)


def kill_loop(node: Node, kills: int, rng: random.Random, after_kill, progress, window: tuple[float, float] = (0.3, 2.0)
              ) -> list[float]:
    """Start serve; K times: let the load run a random while, kill -9 the group, `after_kill(k)`, restart.
    The while starts once the load gets its first 250 again (`progress()`, the count of 250s, moves; at most
    10 s after READY=1), since reconnecting, TLS and AUTH take a good part of a second after a start.
    Leaves the last serve running. Returns the lengths of the windows."""
    node.start()
    windows = []
    for k in range(kills):
        before, deadline = progress(), time.monotonic() + 10
        while progress() == before and time.monotonic() < deadline:
            time.sleep(0.01)
        windows.append(rng.uniform(*window))
        time.sleep(windows[-1])
        node.kill()
        settle(node.sink)
        after_kill(k)
        node.start()
    return windows


class Load:
    """`threads` client threads running `self.session` until stopped; errors only mean "reconnect"."""

    def __init__(self, threads: int):
        self.stop = threading.Event()
        self.errors: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a load thread hangs"

    def _run(self, index: int) -> None:
        while not self.stop.is_set():
            try:
                self.session(index)
            except (OSError, smtplib.SMTPException) as e:      # the server was killed: try again
                with self.lock:
                    self.errors[type(e).__name__] += 1
                time.sleep(0.1 if isinstance(e, ConnectionRefusedError) else 0.02)

    def session(self, index: int) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- submission + delivery

class SubmissionLoad(Load):
    """Messages with 1-3 recipients of their own and a unique X-Test-Seq, over STARTTLS, half the threads with
    AUTH and half as the tenant's trusted network (no scrypt check per connection: more load per window)."""

    def __init__(self, node: Node, threads: int = 6, per_session: int = 50):
        super().__init__(threads)
        self.node, self.per_session = node, per_session
        self.acked: dict[str, tuple[str, tuple[str, ...]]] = {}     # marker -> (queue id, recipients)
        self.attempted = 0
        self.refused: collections.Counter = collections.Counter()
        self._seq = [0] * threads
        self._context = ssl.create_default_context(cafile=node.cafile)

    def session(self, index: int) -> None:
        with smtplib.SMTP("127.0.0.1", self.node.port, timeout=15) as c:
            c.starttls(context=self._context)
            c.ehlo("client.example")
            if index % 2 == 0:            # even threads log in; odd ones submit as the tenant's trusted network
                c.login("app1", PASSWORD)
            for _ in range(self.per_session):
                if self.stop.is_set():
                    return
                self._seq[index] += 1
                marker = f"t{index}-{self._seq[index]}"
                rcpts = [f"{marker}.{k}@example.net" for k in range(1 + self._seq[index] % 3)]
                with self.lock:
                    self.attempted += 1
                code, _ = c.mail("app@example.com")
                accepted = [r for r in rcpts if c.rcpt(r)[0] == 250] if code == 250 else []
                if not accepted:
                    with self.lock:
                        self.refused[f"MAIL {code}" if code != 250 else "RCPT"] += 1
                    c.rset()
                    time.sleep(0.05)
                    continue
                code, text = c.data(
                    (f"From: App <app@example.com>\r\nTo: {', '.join(rcpts)}\r\nSubject: crash test {marker}\r\n"
                     f"X-Test-Seq: {marker}\r\nMessage-ID: <{marker}.{time.time_ns()}@example.com>\r\n\r\n"
                     f"Body of {marker}.\r\n").encode())
                if code == 250:
                    with self.lock:
                        self.acked[marker] = (text.decode().split()[-1], tuple(r.lower() for r in accepted))
                else:
                    with self.lock:
                        self.refused[code] += 1


@dataclasses.dataclass
class SubmissionResult:
    kills: int
    attempted: int
    acknowledged: int                   # messages answered 250
    recipients: int                     # recipients of those messages
    lost: list[str]                     # "marker rcpt: why"
    duplicates: int                     # copies beyond the first, over acknowledged and unacknowledged mail
    in_flight: int                      # copies the sink had while their row was still pending, summed over kills
    unexplained: list[str]              # duplicates beyond what the kills had in flight
    unacknowledged_delivered: int       # committed but the client never saw the 250: delivered, not required
    windows: list[float]
    starts: list[float]
    drain_seconds: float
    seconds: float
    client_errors: dict
    refused: dict
    log_errors: list[str]

    def summary(self) -> str:
        return (f"kills survived: {self.kills}, acknowledged: {self.acknowledged}, lost: {len(self.lost)}, "
                f"duplicates: {self.duplicates} (at most in flight at kills: {self.in_flight})")

    def details(self) -> str:
        return (f"  recipients {self.recipients}, attempted {self.attempted}, unacknowledged but delivered "
                f"{self.unacknowledged_delivered}, unexplained duplicates {len(self.unexplained)}, refused "
                f"{self.refused}, client errors {self.client_errors}\n  serve start (s) "
                f"{', '.join(f'{s:.2f}' for s in self.starts)}; drain {self.drain_seconds:.1f} s; "
                f"total {self.seconds:.1f} s")


def submission_run(node: Node, kills: int, rng: random.Random, threads: int = 6, drain_timeout: float = 60.0
                   ) -> SubmissionResult:
    began, first_start = time.monotonic(), len(node.starts)
    load = SubmissionLoad(node, threads)
    lost: list[str] = []
    in_flight: list[set[tuple[str, str]]] = []

    def after_kill(k: int) -> None:
        with load.lock:
            acked = dict(load.acked)
        messages, states = node.spool_rows()
        for marker, (queue_id, rcpts) in acked.items():
            if queue_id not in messages:
                lost.append(f"{marker} {queue_id}: not in the spool after kill {k + 1}")
            for r in rcpts:
                if (queue_id, r) not in states:
                    lost.append(f"{marker} {queue_id} {r}: no recipient row after kill {k + 1}")
        delivered = {(c.queue_id, c.recipient) for c in map(lambda x: parse_copy(*x), node.sink.snapshot())}
        in_flight.append({key for key in delivered if states.get(key) in PENDING})

    load.start()
    try:
        windows = kill_loop(node, kills, rng, after_kill, lambda: len(load.acked))
    finally:
        load.finish()
    acked = dict(load.acked)
    wanted = {(queue_id, r): marker for marker, (queue_id, rcpts) in acked.items() for r in rcpts}
    drain_began = time.monotonic()
    deadline = drain_began + drain_timeout
    while True:
        copies = [parse_copy(*x) for x in node.sink.snapshot()]
        have = {(c.queue_id, c.recipient) for c in copies}
        _, states = node.spool_rows()
        pending = [key for key, state in states.items() if state in PENDING]
        if (wanted.keys() <= have and not pending) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    drain = time.monotonic() - drain_began
    node.kill()

    counts = collections.Counter((c.queue_id, c.recipient) for c in copies)
    markers = collections.defaultdict(set)
    for c in copies:
        markers[(c.queue_id, c.recipient)].add(c.marker)
    for key, marker in sorted(wanted.items()):
        if counts[key] == 0:
            lost.append(f"{marker} {key[0]} {key[1]}: never delivered (state {states.get(key)})")
        elif markers[key] != {marker}:
            lost.append(f"{marker} {key[0]} {key[1]}: delivered with markers {sorted(map(str, markers[key]))}")
    flights = collections.Counter(key for kill in in_flight for key in kill)
    unexplained = [f"{key[0]} {key[1]}: {n} copies, in flight at {flights[key]} kill(s)"
                   for key, n in sorted(counts.items()) if n - 1 > flights[key]]
    return SubmissionResult(
        kills=kills, attempted=load.attempted, acknowledged=len(acked), recipients=len(wanted), lost=lost,
        duplicates=sum(n - 1 for n in counts.values()), in_flight=sum(len(k) for k in in_flight),
        unexplained=unexplained, unacknowledged_delivered=len(counts.keys() - wanted.keys()), windows=windows,
        starts=node.starts[first_start:], drain_seconds=drain, seconds=time.monotonic() - began,
        client_errors=dict(load.errors), refused=dict(load.refused), log_errors=node.log_errors())


# ---------------------------------------------------------------- inbound: unsubscribes and bounces

def reply_to_unsubscribe(recipient: str, address: str, n: int) -> bytes:
    return (f"From: <{recipient}>\r\nTo: <{address}>\r\nSubject: Re: crash test\r\n"
            f"Message-ID: <reply{n}.{time.time_ns()}@example.net>\r\n\r\nPlease stop.\r\n").encode()


def hard_bounce(recipient: str, n: int) -> bytes:
    """A Postfix-style RFC 3464 report: the recipient does not exist (5.1.1)."""
    return (b"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
            b"To: whoever@bounces.websofttt.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            + f"Message-ID: <dsn{n}.{time.time_ns()}@mx.example.net>\r\n".encode()
            + b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n"
              b"\r\n--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n\r\n"
              b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
            + f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
              f"Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n".encode()
            + b"--B--\r\n")


@dataclasses.dataclass(frozen=True)
class Job:
    kind: str           # "unsubscribe" | "bounce"
    recipient: str
    token: str

    @property
    def expected(self) -> tuple[str, str, str]:
        """The suppression it must leave: (address, scope, cause)."""
        if self.kind == "unsubscribe":
            return self.recipient, TENANT, "unsubscribe"
        return self.recipient, "global", "hard_bounce"


def deliver_copies(node: Node, recipients: list[str], timeout: float = 120.0) -> dict[str, Copy]:
    """Submit to `recipients` (100 per message; serve must run) and wait for one copy of each at the sink."""
    context = ssl.create_default_context(cafile=node.cafile)
    with smtplib.SMTP("127.0.0.1", node.port, timeout=30) as c:
        c.starttls(context=context)
        c.login("app1", PASSWORD)
        for start in range(0, len(recipients), 100):
            batch = recipients[start:start + 100]
            c.mail("app@example.com")
            for r in batch:
                assert c.rcpt(r)[0] == 250, r
            code, text = c.data(b"From: App <app@example.com>\r\nTo: list@example.com\r\nSubject: newsletter\r\n"
                                b"X-Test-Seq: newsletter\r\n\r\nNews.\r\n")
            assert code == 250, text
    deadline = time.monotonic() + timeout
    wanted = {r.lower() for r in recipients}
    while True:
        copies = {c.recipient: c for c in map(lambda x: parse_copy(*x), node.sink.snapshot())
                  if c.recipient in wanted}
        if len(copies) == len(wanted):
            return copies
        assert time.monotonic() < deadline, f"only {len(copies)} of {len(wanted)} copies delivered"
        time.sleep(0.2)


class InboundLoad(Load):
    """Each job sent until answered 250 (as a real MTA retries), over plain SMTP or STARTTLS (odd threads)."""

    def __init__(self, node: Node, jobs: list[Job], threads: int = 4, per_session: int = 10, pace: float = 0.0):
        super().__init__(threads)
        self.node, self.per_session, self.pace = node, per_session, pace    # pace: s between a thread's messages
        self.todo = collections.deque(jobs)
        self.acked: dict[Job, str] = {}          # job -> inbound id from the 250
        self.sent = 0
        self.refused: collections.Counter = collections.Counter()
        self._context = ssl.create_default_context(cafile=node.cafile)

    def _take(self) -> Job | None:
        with self.lock:
            return self.todo.popleft() if self.todo else None

    def session(self, index: int) -> None:
        job = None
        try:
            with smtplib.SMTP("127.0.0.1", self.node.inbound_port, timeout=15) as c:
                c.ehlo("mx.recipient.example")
                if index % 2:
                    c.starttls(context=self._context)
                    c.ehlo("mx.recipient.example")
                for _ in range(self.per_session):
                    if self.stop.is_set():
                        return
                    job = self._take()
                    if job is None:
                        time.sleep(0.05)
                        return
                    with self.lock:
                        self.sent += 1
                        n = self.sent
                    time.sleep(self.pace)
                    if job.kind == "unsubscribe":
                        address = f"unsubscribe+{job.token}@websofttt.com"
                        sender, raw = job.recipient, reply_to_unsubscribe(job.recipient, address, n)
                    else:
                        address = f"bounce+{job.token}@bounces.websofttt.com"
                        sender, raw = "", hard_bounce(job.recipient, n)
                    c.mail(sender)
                    code, text = c.rcpt(address)
                    if code != 250:
                        with self.lock:
                            self.refused[code] += 1
                        c.rset()
                        continue          # job stays out: a refused RCPT is a bug the final check shows
                    code, text = c.data(raw)
                    if code == 250:
                        with self.lock:
                            self.acked[job] = text.decode().split()[-1]
                        job = None
                    else:
                        with self.lock:
                            self.refused[code] += 1
                        self._put_back(job)
                        job = None
        finally:
            if job is not None:           # no answer (the server died): the sender tries again later
                self._put_back(job)

    def _put_back(self, job: Job) -> None:
        with self.lock:
            self.todo.append(job)


@dataclasses.dataclass
class InboundResult:
    kills: int
    jobs: int
    sent: int
    acknowledged: int
    unsubscribes: int
    bounces: int
    lost: list[str]
    duplicates: int             # inbound messages acted on twice (bounce records per inbound message beyond one)
    in_flight: int              # acknowledged but not yet processed at the kills, summed
    unexplained: list[str]
    windows: list[float]
    starts: list[float]
    delivery_seconds: float
    drain_seconds: float
    seconds: float
    client_errors: dict
    refused: dict
    log_errors: list[str]

    def summary(self) -> str:
        return (f"kills survived: {self.kills}, acknowledged: {self.acknowledged}, lost: {len(self.lost)}, "
                f"duplicates: {self.duplicates} (at most in flight at kills: {self.in_flight})")

    def details(self) -> str:
        return (f"  unsubscribes {self.unsubscribes}, hard bounces {self.bounces}, jobs {self.jobs}, messages "
                f"sent {self.sent}, unexplained duplicates {len(self.unexplained)}, refused {self.refused}, "
                f"client errors {self.client_errors}\n  serve start (s) "
                f"{', '.join(f'{s:.2f}' for s in self.starts)}; copies delivered first in "
                f"{self.delivery_seconds:.1f} s; drain {self.drain_seconds:.1f} s; total {self.seconds:.1f} s")


def inbound_run(node: Node, kills: int, rng: random.Random, tokens: int = 200, threads: int = 4, pace: float = 0.0,
                drain_timeout: float = 60.0) -> InboundResult:
    """`tokens` copies are delivered first (half to be unsubscribed by reply, half hard-bounced); `pace` spreads
    the one message per token over the kills."""
    began, first_start = time.monotonic(), len(node.starts)
    node.start()
    recipients = [f"{'unsub' if i % 2 else 'gone'}{i}@example.net" for i in range(tokens)]
    copies = deliver_copies(node, recipients)
    delivery = time.monotonic() - began
    jobs = []
    for r in recipients:
        copy = copies[r]
        if r.startswith("unsub"):
            assert copy.unsubscribe and copy.unsubscribe == copy.token, copy
            jobs.append(Job("unsubscribe", r, copy.unsubscribe))
        else:
            assert copy.token, copy
            jobs.append(Job("bounce", r, copy.token))
    rng.shuffle(jobs)
    node.kill()

    load = InboundLoad(node, jobs, threads, pace=pace)
    lost: list[str] = []
    unprocessed: list[set[str]] = []

    def after_kill(k: int) -> None:
        with load.lock:
            acked = dict(load.acked)
        rows = node.mailbox_rows()
        lost.extend(f"{job.kind} {job.recipient} ({inbound_id}): not in the mailbox after kill {k + 1}"
                    for job, inbound_id in acked.items() if inbound_id not in rows)
        unprocessed.append({i for i, processed in rows.items() if not processed})

    load.start()
    try:
        # with every job answered there is nothing to wait for
        windows = kill_loop(node, kills, rng, after_kill, lambda: len(load.acked) if load.todo else time.monotonic())
    finally:
        load.finish()
    acked = dict(load.acked)
    drain_began = time.monotonic()
    deadline = drain_began + drain_timeout
    while True:
        rows = node.mailbox_rows()
        if all(rows.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    while True:                       # then as the operator sees it
        found = node.suppressions()
        missing = [job for job in acked if job.expected not in found]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    drain = time.monotonic() - drain_began
    node.kill()
    rows = node.mailbox_rows()
    lost.extend(f"{job.kind} {job.recipient} ({inbound_id}): not in the mailbox at the end"
                for job, inbound_id in acked.items() if inbound_id not in rows)
    lost.extend(f"{job.kind} {job.recipient} ({acked[job]}): no suppression {job.expected}, mailbox row "
                f"{'processed' if rows.get(acked[job]) else 'unprocessed' if acked[job] in rows else 'missing'}"
                for job in missing)
    sources = node.bounce_sources()
    flights = collections.Counter(i for kill in unprocessed for i in kill)
    duplicates = {source.split()[1]: n for source, n in sources.items() if n > 1}
    unexplained = [f"inbound {i}: acted on {n} times, unprocessed at {flights[i]} kill(s)"
                   for i, n in sorted(duplicates.items()) if n - 1 > flights[i]]
    return InboundResult(
        kills=kills, jobs=len(jobs), sent=load.sent, acknowledged=len(acked),
        unsubscribes=sum(j.kind == "unsubscribe" for j in acked), bounces=sum(j.kind == "bounce" for j in acked),
        lost=lost, duplicates=sum(n - 1 for n in duplicates.values()), in_flight=sum(len(k) for k in unprocessed),
        unexplained=unexplained, windows=windows, starts=node.starts[first_start:], delivery_seconds=delivery,
        drain_seconds=drain, seconds=time.monotonic() - began, client_errors=dict(load.errors),
        refused=dict(load.refused), log_errors=node.log_errors())
