"""The services of one benchmark run (sink, three Postfix instances, OpenDKIM, Dovecot, the relay, for
the d-pg paths a PostgreSQL server with a relay node per path, and for d-mx and d-secure the DNS, policy server
and Postfix MX of tls_mx.py with a relay node per path) and the runs against them.

`Bench.run` is one measured run: start the injector, stop the clock when the sink has counted all N,
and take the servers' CPU, memory and the load from outside around it; on request, the heartbeat
probe (heartbeat.py) times NOOPs on a connection of its own meanwhile. `Bench.ehlo_times` times EHLO
replies from a client, `Bench.flood_probe` measures a tenant's rate under a flood of wrong passwords.
Everything it starts is stopped by pid in `Bench.stop`, which run.py calls in a finally block.

The d-pg paths' PostgreSQL is tests/postgres.py's private server (fsync off: what is measured is the
relay's way with a store across a network, not the database's disk); path d-pg1ms reaches it through
tests/latency_proxy.py, run as a process of its own so that the harness's threads do not jitter its
timers. The proxy stands for the network: its CPU is reported apart, not as the relay's cost.
"""
from __future__ import annotations

import argparse
import json
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

import check
import message
from dovecot import Dovecot, calibrate
from measure import Daemon, ForeignLoad, RssSampler, cpu_seconds, free_port, percentile, reply_code
from postfix import OpenDKIM, Postfix
from relay_node import DKIM_RECORD, GENERATED_USERNAME, PASSWORD, USERNAME, RelayNode
from sink import Sink
from tls_mx import RECIPIENT as TLS_RECIPIENT
from tls_mx import TlsMx, missing_programs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.append(str(REPO))

import psycopg  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

PATHS = {
    "a": "smtp-source -> smtp-sink",
    "b": "smtp-source -> Postfix -> sink",
    "c": "smtp-source -> Postfix+OpenDKIM -> sink",
    "d": "smtp-source -> relay -> sink",
    "e": "loadgen TLS+AUTH password -> relay -> sink",
    "f": "loadgen TLS+AUTH -> Postfix+Dovecot+OpenDKIM -> sink",
    "g": "loadgen TLS+AUTH generated -> relay -> sink",
    "d-pg": "smtp-source -> relay (PostgreSQL store) -> sink",
    "d-pg1ms": "smtp-source -> relay (PostgreSQL +1 ms) -> sink",
    "d-shaped": "smtp-source -> relay (the sink a shaped site) -> sink",
    "d-mx": "smtp-source -> relay -> MX (STARTTLS) -> sink",
    "d-secure": "smtp-source -> relay MTA-STS+DANE -> MX -> sink",
}
# d-shaped: a relay node of its own whose shaping rules are the shipped ones plus a site for the sink, with a
# rate above what the relay reaches (it is claimed through the store every SHAPED_CLAIM_SECONDS, not a limit).
SHAPED_RATE = "100000/60s"
RELAY_PATHS = ("d", "e", "g")   # the paths whose server is the relay node with its store in SQLite
# The paths whose relay node keeps its store in PostgreSQL (a node and a database each): the milliseconds
# the latency proxy adds to each of the store's round trips, or None for a direct connection.
PG_DELAY_MS: dict[str, float | None] = {"d-pg": None, "d-pg1ms": 1.0}
# d-mx and d-secure: a relay node each that looks the recipient domain's MX up through Unbound and delivers to a
# Postfix MX offering STARTTLS (tls_mx.py), both the same; d-secure with MTA-STS, DANE and DNSSEC on (True).
TLS_PATHS: dict[str, bool] = {"d-mx": False, "d-secure": True}
HEARTBEAT_PATHS = ("d", "d-pg", "d-pg1ms")     # the paths whose measured runs carry the heartbeat probe
AUTH_PATHS = ("e", "f", "g")    # the paths the load generator drives over STARTTLS + AUTH PLAIN
SLOW_AUTH = ("f",)              # every AUTH pays a ~0.1 s password check (Dovecot checks the Argon2id hash even on
                                # a cache hit); the relay pays scrypt once per worker (its verified-logins cache)
STALL_SECONDS = 60          # a run whose sink count does not move for this long has failed
PER_DESTINATION = 10        # the relay's default delivery.per_destination (per worker)
LATENCY_CONNECTIONS = 20    # pooled client connections of the latency probe (opened before its clock starts)
EHLO_COUNT = 20             # EHLOs timed per listener, each on a new connection
FLOOD_CLIENTS = 50          # flooding clients, from 127.0.0.2 ... 127.0.0.51
FLOOD_WINDOW_SECONDS = 5    # the flood probe alternates windows this long: alone, flood, alone, ...
VICTIM_CONCURRENCY = 10     # the verified tenant's client in the flood probe (from 127.0.0.1)
HEARTBEAT_INTERVAL = 0.05   # seconds between the heartbeat probe's NOOPs
RTT_QUERIES = 200           # `SELECT 1` round trips timed to show what the store's network adds


class RunFailed(Exception):
    """A path did not deliver its N messages; the message says what the server answered."""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def config_name(concurrency: int, reuse: bool) -> str:
    return f"c{concurrency} {'reuse' if reuse else 'new'}"


class Bench:
    """The services of one benchmark (sink, Postfix x3, OpenDKIM, Dovecot, relay) and the runs against them."""

    def __init__(self, args: argparse.Namespace, root: Path):
        self.args, self.root = args, root
        self.msg = message.build()
        self.msg_lf = root / "message-lf.eml"          # for smtp-source -F
        self.msg_crlf = root / "message-crlf.eml"      # for the load generator
        message.write_for_smtp_source(self.msg, self.msg_lf)
        self.msg_crlf.write_bytes(self.msg)
        self.sink: Sink | None = None
        self.postfix: Postfix | None = None
        self.postfix_dkim: Postfix | None = None
        self.opendkim: OpenDKIM | None = None
        self.dovecot: Dovecot | None = None
        self.postfix_sasl: Postfix | None = None
        self.relay: RelayNode | None = None
        self.postgres: PostgresServer | None = None
        self.proxy: Daemon | None = None          # DelayProxy between d-pg1ms's node and PostgreSQL
        self.pg_nodes: dict[str, RelayNode] = {}       # the relay nodes of one path each (d-pg, d-shaped, d-mx, ...)
        self.tls_mx: TlsMx | None = None          # d-mx and d-secure: DNS, MTA-STS policy server, Postfix MX
        self.store_rtt: dict | None = None        # `SELECT 1` round trip, direct and through the proxy
        self.injector: Daemon | None = None
        self.heartbeat: Daemon | None = None
        self.others: list = []                   # the flood probe's relay nodes and clients, stopped with the rest
        self.broken: dict[str, str] = {}
        self.sink_port = 0
        self.password_costs: dict | None = None  # path f: scrypt vs Argon2id CPU per check (dovecot.calibrate)
        self.password_file = root / "password-app1"          # path f's client (Dovecot has the same password)
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)

    # services
    def start(self, dump_dir: Path) -> None:
        paths = self.args.paths
        self.sink_port = free_port()
        self.sink = Sink(self.root, self.sink_port, dump_dir)
        limit = self.args.workers * PER_DESTINATION
        if "b" in paths:
            self.postfix = Postfix(self.root, "postfix", self.sink_port, limit)
            log(f"Postfix on 127.0.0.1:{self.postfix.port} (config {self.postfix.conf})")
        if "c" in paths or "f" in paths:            # one OpenDKIM for both (their runs never overlap)
            self.opendkim = OpenDKIM(self.root)
        if "c" in paths:
            self.postfix_dkim = Postfix(self.root, "postfix-dkim", self.sink_port, limit, self.opendkim.socket)
            log(f"Postfix+OpenDKIM on 127.0.0.1:{self.postfix_dkim.port} (milter {self.opendkim.socket})")
        if "f" in paths:
            try:
                self._start_sasl(limit)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:      # the other paths still run
                self.fail("f", f"Postfix + Dovecot did not start: {e}")
        if any(p in paths for p in RELAY_PATHS):
            self.relay = RelayNode(self.root, self.sink_port, self.args.workers, generated="g" in paths)
            log(f"relay on 127.0.0.1:{self.relay.port} (implicit TLS {self.relay.tls_port}) with "
                f"{self.args.workers} workers (data {self.relay.data})")
            if "g" in paths and self.relay.generated_file is None:
                log(f"path g: no generated credential: {self.relay.generated_error}")
        if any(p in PG_DELAY_MS for p in paths):
            self._start_postgres()
        if "d-shaped" in paths:
            rules = self.root / "shaping-bench.toml"
            rules.write_text((REPO / "config" / "shaping.toml").read_text() + f'\n[sites.bench]\nmatch = '
                             f'["127.0.0.1:{self.sink_port}"]\nmax_message_rate = "{SHAPED_RATE}"\n')
            self.pg_nodes["d-shaped"] = node = RelayNode(self.root, self.sink_port, self.args.workers,
                                                         name="relay-shaped", extra_config=f'shaping_file = "{rules}"\n')
            log(f"relay with a shaped site on 127.0.0.1:{node.port} (rules {rules})")
        if any(p in TLS_PATHS for p in paths):
            self._start_tls_mx(limit)

    def _start_tls_mx(self, limit: int) -> None:
        """d-mx and d-secure: the recipient domain's DNS, policy server and MX (tls_mx.py), then a relay node for
        each path with no route for that domain; a path whose part does not start fails alone."""
        paths = [p for p in TLS_PATHS if p in self.args.paths]
        missing = missing_programs()
        if missing:
            for path in paths:
                self.fail(path, f"not installed: {', '.join(missing)} (Debian: knot, unbound, ldnsutils, postfix)")
            return
        try:
            self.tls_mx = TlsMx(self.root, self.sink_port, limit)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            for path in paths:
                self.fail(path, f"DNS, policy server or MX did not start: {e}")
            return
        log(f"transport security: {self.tls_mx.describe()}")
        for path in paths:
            try:
                self.pg_nodes[path] = node = RelayNode(self.root, self.sink_port, self.args.workers, name=f"relay-{path}",
                                                       extra_config=self.tls_mx.relay_config(TLS_PATHS[path]))
            except (RuntimeError, OSError) as e:
                self.fail(path, f"relay node did not start: {e}")
                continue
            log(f"relay for {path} on 127.0.0.1:{node.port} (MTA-STS and DANE "
                f"{'on, DNSSEC trusted' if TLS_PATHS[path] else 'off'})")

    def _start_postgres(self) -> None:
        """The d-pg paths: a private PostgreSQL server, a database and a relay node for each path, d-pg1ms's
        through the delaying proxy; a path whose part does not start fails alone."""
        paths = [p for p in PG_DELAY_MS if p in self.args.paths]
        self.postgres = PostgresServer()
        try:
            self.postgres.start()
        except (RuntimeError, OSError) as e:
            for path in paths:
                self.fail(path, f"PostgreSQL did not start: {e}")
            return
        with psycopg.connect(self.postgres.url("postgres")) as conn:
            version = conn.info.server_version
        log(f"PostgreSQL {version // 10000}.{version % 10000} on 127.0.0.1:{self.postgres.port} "
            f"(data {self.postgres.dir})")
        for path in paths:
            delay = PG_DELAY_MS[path]
            try:
                url = direct = self.postgres.new_database()
                if delay is not None:
                    self.proxy, port = self._start_proxy(delay)
                    url = direct.replace(f":{self.postgres.port}/", f":{port}/")
                    self.store_rtt = _store_rtt(direct, url)
                    log(f"store round trip, median of {RTT_QUERIES} `SELECT 1`: {self.store_rtt['direct_ms']:.3f} ms "
                        f"direct, {self.store_rtt['proxied_ms']:.3f} ms through the proxy (+{delay} ms asked)")
                self.pg_nodes[path] = node = RelayNode(self.root, self.sink_port, self.args.workers,
                                                       name=f"relay-{path}", store_url=url)
            except (RuntimeError, OSError, psycopg.Error) as e:
                self.fail(path, f"relay node on PostgreSQL did not start: {e}")
                continue
            log(f"relay for {path} on 127.0.0.1:{node.port}, store {url}")

    def _start_proxy(self, delay_ms: float) -> tuple[Daemon, int]:
        """tests/latency_proxy.py in a process of its own, in front of PostgreSQL; returns it and its port."""
        out = self.root / "latency-proxy.out"
        proxy = Daemon("latency proxy", [sys.executable, str(REPO / "tests" / "latency_proxy.py"),
                                         str(self.postgres.port), str(delay_ms)],
                       self.root / "latency-proxy.log", stdout=out)
        deadline = time.monotonic() + 10
        while not out.read_text().endswith("\n"):
            if not proxy.alive() or time.monotonic() > deadline:
                proxy.stop()
                raise RuntimeError(f"the latency proxy did not start: "
                                   f"{(self.root / 'latency-proxy.log').read_text(errors='replace')[-500:]}")
            time.sleep(0.05)
        return proxy, int(out.read_text())

    def _start_sasl(self, limit: int) -> None:
        """Path f: the password's Argon2id parameters (as costly as the relay's scrypt), Dovecot, Postfix."""
        self.password_costs = calibrate(PASSWORD)
        log(f"one password check, CPU on this machine: relay scrypt ({self.password_costs['scrypt']['params']}) "
            f"{self.password_costs['scrypt']['cpu_ms']:.0f} ms, Argon2id "
            f"({self.password_costs['argon2id']['params']}) {self.password_costs['argon2id']['cpu_ms']:.0f} ms")
        self.dovecot = Dovecot(self.root, {USERNAME: self.password_costs["hash"]})
        self.postfix_sasl = Postfix(self.root, "postfix-sasl", self.sink_port, limit, self.opendkim.socket,
                                    sasl_socket=self.dovecot.socket)
        log(f"Postfix+Dovecot SASL+OpenDKIM on 127.0.0.1:{self.postfix_sasl.port} "
            f"(STARTTLS, auth socket {self.dovecot.socket})")

    def start_sink(self) -> None:
        """Only the counting sink (the flood probe alone needs nothing else)."""
        self.sink_port = free_port()
        self.sink = Sink(self.root, self.sink_port)

    def swap_sink(self) -> None:
        """Replace the dumping sink of the check by the counting one, on the same port (the configs name it)."""
        self.sink.stop()
        self.sink = Sink(self.root, self.sink_port)

    def stop(self) -> None:
        for service in (self.injector, self.heartbeat, *self.others, self.relay, *self.pg_nodes.values(), self.proxy,
                        self.tls_mx, self.postgres, self.postfix_sasl, self.postfix_dkim, self.dovecot, self.opendkim,
                        self.postfix, self.sink):
            if service is None:
                continue
            try:
                service.stop()
            except Exception as e:    # keep stopping the others
                log(f"while stopping {type(service).__name__}: {e}")

    def node(self, path: str) -> RelayNode | None:
        """The relay node that serves `path` (None for the Postfix paths and a)."""
        return self.pg_nodes.get(path) if path in self.pg_nodes else self.relay if path in RELAY_PATHS else None

    def port(self, path: str) -> int:
        return {"a": self.sink_port, "b": getattr(self.postfix, "port", 0),
                "c": getattr(self.postfix_dkim, "port", 0),
                "f": getattr(self.postfix_sasl, "port", 0)}.get(path) or self.node(path).port

    def cpu_parts(self, path: str) -> dict[str, list[int]]:
        """The process trees whose CPU a path costs, by name: the server, plus OpenDKIM for c, plus OpenDKIM and
        Dovecot (master, auth, auth-workers) for f, plus the PostgreSQL server (its backends are its children)
        for the d-pg paths; none for a."""
        if path in PG_DELAY_MS:
            return {"relay": [self.pg_nodes[path].daemon.pid], "postgres": [self.postgres.process.pid]}
        if path == "d-shaped" or path in TLS_PATHS:
            return {"relay": [self.pg_nodes[path].daemon.pid]}
        relay = {"relay": [self.relay.daemon.pid]} if self.relay else {}
        return {"a": {}, "b": {"postfix": [self.postfix.daemon.pid]} if self.postfix else {},
                "c": {"postfix": [self.postfix_dkim.daemon.pid], "opendkim": [self.opendkim.daemon.pid]}
                if self.postfix_dkim else {},
                "f": {"postfix": [self.postfix_sasl.daemon.pid], "opendkim": [self.opendkim.daemon.pid],
                      "dovecot": [self.dovecot.daemon.pid]} if self.postfix_sasl else {},
                "d": relay, "e": relay, "g": relay}[path]

    def cpu_roots(self, path: str) -> list[int]:
        return [pid for pids in self.cpu_parts(path).values() for pid in pids]

    def credentials(self, path: str) -> tuple[str, Path]:
        """Username and password file of an AUTH path's client."""
        if path == "e":
            return USERNAME, self.relay.password_file
        if path == "f":
            return USERNAME, self.password_file
        if self.relay.generated_file is None:
            raise RunFailed(self.relay.generated_error)
        return GENERATED_USERNAME, self.relay.generated_file

    # injection
    @staticmethod
    def recipient(path: str) -> str:
        """The envelope recipient: tls_mx.RECIPIENT (its domain found through DNS) for d-mx and d-secure, else
        message.RECIPIENT (routed to the sink)."""
        return TLS_RECIPIENT if path in TLS_PATHS else message.RECIPIENT

    def inject(self, path: str, n: int, concurrency: int, reuse: bool, rate: float | None = None) -> Daemon:
        out = self.root / "injector.out"
        out.write_bytes(b"")
        if path in AUTH_PATHS or rate is not None:      # the load generator (the latency probe too: it times DATA)
            argv = [sys.executable, str(HERE / "loadgen.py"), "--port", str(self.port(path)), "--messages", str(n),
                    "--concurrency", str(concurrency), "--message-file", str(self.msg_crlf),
                    "--sender", message.SENDER, "--recipient", self.recipient(path)]
            if reuse:
                argv.append("--reuse")
            if path in AUTH_PATHS:
                user, password_file = self.credentials(path)
                argv += ["--starttls", "--user", user, "--password-file", str(password_file)]
            if rate is not None:
                argv += ["--rate", f"{rate:.3f}"]
        else:
            # smtp-source(1): -s parallel sessions, -m messages in all, -d: don't disconnect after a
            # message but send the next one over the same connection (so "reuse" = -d, and each of
            # the -s sessions keeps its connection for ~N/s messages); without -d, one per message.
            argv = ["smtp-source", "-s", str(concurrency), "-m", str(n), *(["-d"] if reuse else []),
                    "-F", str(self.msg_lf), "-f", message.SENDER, "-t", self.recipient(path),
                    "-M", "source.example.com", f"127.0.0.1:{self.port(path)}"]
        self.injector = Daemon(f"injector {path}", argv, self.root / "injector.log", stdout=out)
        return self.injector

    def injector_failure(self, path: str) -> str:
        """What the injector and the server said when the injector gave up."""
        out = (self.root / "injector.out").read_text(errors="replace").strip()
        try:                                     # the load generator's JSON: its errors are what matters
            result = json.loads(out)
            out = f"sent {result['sent']}, errors: {'; '.join(result['errors'])}"
        except (ValueError, KeyError, TypeError):
            out = out[-1500:]
        err = (self.root / "injector.log").read_text(errors="replace").strip().splitlines()[-5:]
        text = f"injector exited {self.injector.proc.returncode}: {out} {' | '.join(err)}".strip()
        if self.node(path) is not None:
            text += f" | relay log: {' | '.join(self.node(path).refusals())}"
        if path == "f" and self.postfix_sasl is not None:
            problems = self.postfix_sasl.problems()
            text += f" | Postfix: {problems} | Dovecot: {self.dovecot.diagnose(3)}"
            if "no SASL authentication mechanisms" in problems:
                text += (" | (smtpd gave up waiting 10 s for Dovecot's auth handshake: the single auth process was "
                         "busy checking the Argon2id hashes of the logins queued before it)")
        return text

    def _retried(self, n: int, rate: float | None) -> list[str] | None:
        """The load generator exits 1 after any error, though it retries each failed message: when it still
        sent all N (throughput mode), the run counts, with the errors kept; otherwise None (the run failed)."""
        if rate is not None:
            return None
        try:
            out = json.loads((self.root / "injector.out").read_text())
        except (OSError, ValueError):
            return None
        return out["errors"] if out.get("sent", 0) >= n and out.get("errors") else None

    def run(self, path: str, n: int, concurrency: int, reuse: bool, rate: float | None = None,
            heartbeat: bool = False) -> dict:
        """One measured run: inject N, stop the clock when the sink has them all; CPU and RSS around it.
        heartbeat: NOOPs timed on a connection of their own to the relay while the run lasts (heartbeat.py)."""
        try:
            return self._run(path, n, concurrency, reuse, rate, heartbeat)
        finally:
            for daemon in (self.injector, self.heartbeat):
                if daemon is not None:
                    daemon.stop()            # a failed run must not leave its injector sending
            self.injector = self.heartbeat = None

    def _start_heartbeat(self, path: str) -> None:
        """heartbeat.py on the path's relay node, returning once its EHLO was answered."""
        out = self.root / "heartbeat.out"
        self.heartbeat = Daemon("heartbeat", [sys.executable, str(HERE / "heartbeat.py"), "--port",
                                              str(self.port(path)), "--interval", str(HEARTBEAT_INTERVAL)],
                                self.root / "heartbeat.log", stdout=out)
        deadline = time.monotonic() + 30
        while not out.read_text().startswith("ready\n"):
            if not self.heartbeat.alive() or time.monotonic() > deadline:
                raise RunFailed(f"the heartbeat probe did not get its EHLO answered: "
                                f"{(self.root / 'heartbeat.log').read_text(errors='replace')[-500:]}")
            time.sleep(0.02)

    def _stop_heartbeat(self, started: float, finished: float) -> dict:
        """Stop the heartbeat probe; its NOOP reply times (ms) of the NOOPs written while the run lasted. A NOOP
        still unanswered counts with the time it had waited."""
        self.heartbeat.stop()
        self.heartbeat = None
        out = json.loads((self.root / "heartbeat.out").read_text().splitlines()[-1])
        samples = out["samples"] + ([out["pending"]] if out["pending"] else [])
        times = [ms for sent, ms in samples if started <= sent <= finished]
        result = {"heartbeat_ms": times, "heartbeat": {
            "count": len(times), "p50_ms": round(percentile(times, 50), 2) if times else None,
            "p99_ms": round(percentile(times, 99), 2) if times else None, "max_ms": max(times, default=None)}}
        if out["error"]:
            result["heartbeat"]["error"] = out["error"]
        return result

    def _run(self, path: str, n: int, concurrency: int, reuse: bool, rate: float | None, heartbeat: bool) -> dict:
        parts = self.cpu_parts(path)
        roots = self.cpu_roots(path)
        sink = self.sink
        base = sink.count
        sink.arm(base + n)
        if heartbeat:
            self._start_heartbeat(path)
        proxy_before = cpu_seconds([self.proxy.pid]) if path == "d-pg1ms" else 0.0
        next_hop = self.tls_mx.cpu_parts() if path in TLS_PATHS else {}     # the MX, DNS, policy server: not the relay
        next_hop_before = {name: cpu_seconds(pids) for name, pids in next_hop.items()}
        cpu_before = cpu_seconds(roots)
        parts_before = {name: cpu_seconds(pids) for name, pids in parts.items()}
        timeout = 120 + n * 1.0
        clients_before = _children_cpu()
        with RssSampler(roots) as rss, ForeignLoad() as foreign:
            started = time.monotonic()
            injector = self.inject(path, n, concurrency, reuse, rate)
            injected = None
            last_count, last_move = sink.count, started
            while sink.reached_at is None:
                now = time.monotonic()
                if injected is None and injector.proc.poll() is not None:
                    injected = now
                    if injector.proc.returncode != 0 and self._retried(n, rate) is None:
                        time.sleep(1)
                        raise RunFailed(self.injector_failure(path))
                if sink.count != last_count:
                    last_count, last_move = sink.count, now
                elif now - last_move > STALL_SECONDS or now - started > timeout:
                    raise RunFailed(f"sink stuck at {sink.count - base} of {n} messages; "
                                    f"{self.injector_failure(path) if injected else 'injector still running'}")
                time.sleep(0.02)
            finished = sink.reached_at
            beats = self._stop_heartbeat(started, finished) if heartbeat else {}
            injector.proc.wait(60)
            client_cpu = _children_cpu() - clients_before
            injected = injected or time.monotonic()
            retried = self._retried(n, rate) if injector.proc.returncode != 0 else []
            if retried is None:
                raise RunFailed(self.injector_failure(path))
            sink.settle(quiet=1.0)       # trailing work (queue clean-up, records) is part of the cost
            cpu = cpu_seconds(roots) - cpu_before if roots else None
            parts_cpu = {name: cpu_seconds(pids) - parts_before[name] for name, pids in parts.items()}
            proxy_cpu = cpu_seconds([self.proxy.pid]) - proxy_before if path == "d-pg1ms" else None
            next_hop_cpu = {name: cpu_seconds(pids) - next_hop_before[name] for name, pids in next_hop.items()}
        seconds = finished - started
        result = {"path": path, "concurrency": concurrency, "reuse": reuse, "messages": n,
                  "seconds": round(seconds, 3), "rate": round(n / seconds, 2),
                  "inject_seconds": round(injected - started, 3),
                  "cpu_seconds": None if cpu is None else round(cpu, 3),
                  "cpu_ms_per_message": None if cpu is None else round(cpu * 1000 / n, 3),
                  "peak_rss_mib": round(rss.peak_kib / 1024, 1) if roots else None,
                  "peak_pss_mib": round(rss.peak_pss_kib / 1024, 1) if roots else None,
                  "cpu_ms_parts": {k: round(v * 1000 / n, 3) for k, v in parts_cpu.items()} if len(parts) > 1 else None,
                  "client_cpu_ms_per_message": round(client_cpu * 1000 / n, 3),
                  "extra_at_sink": sink.count - base - n,
                  "foreign_cpu_share": round(foreign.share, 3)} | beats
        if proxy_cpu is not None:
            result["proxy_cpu_ms_per_message"] = round(proxy_cpu * 1000 / n, 3)
        if next_hop_cpu:
            result["next_hop_cpu_ms_per_message"] = {k: round(v * 1000 / n, 3) for k, v in next_hop_cpu.items()}
        if retried:
            result["client_errors"] = retried
            log(f"{path} {config_name(concurrency, reuse)}: all {n} sent, after errors the client retried: "
                f"{'; '.join(retried)}" + (f" | Postfix: {self.postfix_sasl.problems()}" if path == "f" else ""))
        if rate is not None:
            lat = json.loads((self.root / "injector.out").read_text() or "{}")
            result |= {"latency_ms": lat.get("latencies_ms", []), "late": lat.get("late", 0)}
        return result

    # phases
    def correctness(self, dump_dir: Path) -> dict[str, str]:
        """Two messages per path into the dumping sink, each checked (see check.py)."""
        records = {}
        if self.opendkim:
            records[f"{self.opendkim.selector}._domainkey.{self.opendkim.domain}"] = self.opendkim.dns_txt()
        seen: set[Path] = set()
        verdicts = {}
        for path in self.args.paths:
            if path in self.broken:
                verdicts[path] = f"FAIL: {self.broken[path]}"
                continue
            try:
                self.run(path, 2, 1, False)
            except RunFailed as e:
                self.fail(path, f"correctness check: {e}")
                verdicts[path] = f"FAIL: {e}"
                continue
            time.sleep(0.5)       # smtp-sink closes the dump file after it counted the "."
            dumps = check.new_dumps(dump_dir, seen)
            node = self.node(path)           # each relay node has a provider key of its own
            keys = records | ({DKIM_RECORD: node.dns_txt()} if node is not None else {})
            results = [check.check_message(path, p.read_bytes(), keys) for p in dumps]
            if path in TLS_PATHS and dumps:       # and the TLS each copy went over to the MX, from the node's log
                results.append(check.check_tls(path, node.log.read_text(errors="replace"), 2))
            bad = [r for r in results if not r.startswith("ok")]
            verdicts[path] = (bad[0] if bad else "; ".join(dict.fromkeys(results)) if results else "FAIL: nothing dumped") + \
                f" ({len(dumps)} messages)"
            log(f"check {path}: {verdicts[path]}")
        return verdicts

    def fail(self, path: str, why: str) -> None:
        """Take a failed path out of the benchmark; a failed relay is stopped so that its retries
        cannot reach the sink during another path's run."""
        log(f"path {path} FAILED: {why}")
        self.broken[path] = why
        if path in self.pg_nodes:
            self.pg_nodes.pop(path).stop()
        if path in RELAY_PATHS and self.relay is not None and all(
                p in self.broken for p in RELAY_PATHS if p in self.args.paths):
            self.relay.stop()
            self.relay = None

    def latency(self, path: str, peak: float, n: int, seconds: float) -> dict:
        """Reply latency (end of DATA -> 250) at a fixed rate of half the measured peak, pooled connections."""
        rate = peak / 2
        count = int(min(n, max(100, rate * seconds)))
        result = self.run(path, count, LATENCY_CONNECTIONS, True, rate=rate)
        lat = result.pop("latency_ms")
        return {"rate": round(rate, 1), "messages": count, "p50_ms": round(percentile(lat, 50), 2),
                "p99_ms": round(percentile(lat, 99), 2), "late": result["late"]}

    # EHLO reply time
    def ehlo_times(self, count: int = EHLO_COUNT) -> dict:
        """Median time from writing EHLO to the last line of its reply, over `count` new connections each,
        on the relay's submission port after STARTTLS (and in clear, the trusted network), its implicit-TLS
        port, and Postfix's smtpd in clear (and after STARTTLS, path f's instance)."""
        targets = []
        if self.relay is not None:
            targets += [("relay, submission after STARTTLS", self.relay.port, "starttls"),
                        ("relay, implicit TLS", self.relay.tls_port, "implicit"),
                        ("relay, submission in clear", self.relay.port, "clear")]
        plain = self.postfix or self.postfix_dkim or self.postfix_sasl
        if plain is not None:
            targets.append((f"Postfix smtpd in clear ({plain.name})", plain.port, "clear"))
        if self.postfix_sasl is not None:
            targets.append(("Postfix smtpd after STARTTLS (postfix-sasl)", self.postfix_sasl.port, "starttls"))
            # Postfix leaves Nagle on: its reply waits for the ACK of the TLS 1.3 session tickets it sent just
            # before, which a TCP_NODELAY client delays (~40 ms); a client with Nagle on ACKs them with its EHLO.
            targets.append(("Postfix smtpd after STARTTLS, client with Nagle", self.postfix_sasl.port, "starttls-nagle"))
        out = {}
        for name, port, mode in targets:
            try:
                times = [_ehlo_once(port, mode.removesuffix("-nagle"), nodelay=not mode.endswith("-nagle")) * 1000
                         for _ in range(count)]
                out[name] = {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3),
                             "max_ms": round(max(times), 3), "count": count}
            except (OSError, RunFailed) as e:
                out[name] = {"error": f"{type(e).__name__}: {e}"}
        return out

    # flood probe
    def flood_probe(self, users: str, seconds: float) -> dict:
        """A verified tenant's rate (path e: STARTTLS + AUTH, new connection per message, c10, from 127.0.0.1)
        alone and while FLOOD_CLIENTS clients from 127.0.0.2 ... flood the relay with wrong passwords, for
        unknown usernames or for the tenant's own (`users`), for `seconds` in all.

        Windows of FLOOD_WINDOW_SECONDS alternate: alone, flood, alone, flood, ..., alone. The rate of a node
        drifts by tens of percent from one half-minute to the next on this machine, so each flood window is
        compared with the mean of the two alone windows around it, and the ratio is the median of those.
        The lockout is judged per address over all flood windows. Windows that start after every flooding
        address got its first 454 are also given apart (before that, each address's first failures cost the
        relay a password check). Each variant runs on a relay node of its own, fresh (lockouts last
        auth_failure_window: the first variant's would decide the second's), with the relay's default settings."""
        from flood import summarize
        from policy.settings import load_settings
        node = RelayNode(self.root, self.sink_port, self.args.workers, name=f"relay-flood-{users}")
        self.others.append(node)
        windows = max(2, round(seconds / FLOOD_WINDOW_SECONDS))
        width = seconds / windows
        try:
            sub = load_settings(node.config).submission
            threshold, window = sub.auth_failures, sub.auth_failure_window
            warm = self._victim(node, 2.0)            # the tenant's credential verified before any flood
            if not warm["accepted_at"]:
                raise RunFailed(f"the tenant could not send before the flood: {warm['errors']}")
            alone = [self._victim_window(node, width)]
            during, floods = [], []
            for i in range(windows):
                flood_out = self.root / f"flood-{users}-{i}.json"
                flood = Daemon(f"flood {users}", [sys.executable, str(HERE / "flood.py"), "--port", str(node.port),
                                                  "--first", "127.0.0.2", "--clients", str(FLOOD_CLIENTS),
                                                  "--duration", str(width), "--users", users, "--victim", USERNAME],
                               self.root / f"flood-{users}.log", stdout=flood_out)
                self.others.append(flood)
                try:
                    during.append(self._victim_window(node, width))
                    flood.proc.wait(width + 120)
                finally:
                    flood.stop()
                    self.others.remove(flood)
                try:
                    floods.append(json.loads(flood_out.read_text()))
                except ValueError:
                    raise RunFailed(f"the flood client printed no result: "
                                    f"{(self.root / f'flood-{users}.log').read_text(errors='replace')[-1000:]}") from None
                alone.append(self._victim_window(node, width))
        finally:
            node.stop()
            self.others.remove(node)
        fl = summarize(floods, threshold)
        ratios = [d["rate"] / ((a["rate"] + b["rate"]) / 2) if a["rate"] + b["rate"] else None
                  for a, d, b in zip(alone, during, alone[1:])]
        locked_at = None if fl["all_locked_after"] is None else fl["started"] + fl["all_locked_after"]
        after = [r for r, d in zip(ratios, during) if locked_at is not None and d["started"] >= locked_at]
        alone_messages, alone_cpu = sum(a["messages"] for a in alone), sum(a["cpu"] for a in alone)
        flood_messages, flood_cpu = sum(d["messages"] for d in during), sum(d["cpu"] for d in during)
        per_message = alone_cpu / alone_messages if alone_messages else None
        result = {"users": users, "seconds": round(width * windows, 1), "windows": windows,
                  "window_seconds": round(width, 2), "threshold": threshold,
                  "window_s": window,
                  "alone_rates": [a["rate"] for a in alone], "flood_rates": [d["rate"] for d in during],
                  "window_ratios": [None if r is None else round(r, 3) for r in ratios],
                  "ratio": _median(ratios), "ratio_after_lockout": _median(after) if after else None,
                  "windows_after_lockout": len(after),
                  "alone": {"rate": round(alone_messages / (width * len(alone)), 2),
                            "relay_cpu_ms_per_message": round(per_message * 1000, 2) if per_message else None,
                            "relay_cpu_share": round(alone_cpu / (width * len(alone)), 2),
                            "refused": sum(a["refused"] for a in alone)},
                  "with_flood": {"rate": round(flood_messages / (width * windows), 2),
                                 "relay_cpu_share": round(flood_cpu / (width * windows), 2),
                                 "refused": sum(d["refused"] for d in during),
                                 "errors": [e for d in during for e in d["errors"]][:5]},
                  "flood": fl}
        if per_message is not None and fl["attempts"]:
            extra = flood_cpu - per_message * flood_messages
            result["with_flood"]["relay_cpu_ms_per_flood_attempt"] = round(extra * 1000 / fl["attempts"], 2)
        return result

    def _victim_window(self, node: RelayNode, seconds: float) -> dict:
        """One window of the verified tenant's client: its rate, and the relay's CPU meanwhile."""
        cpu = cpu_seconds([node.daemon.pid])
        started = time.monotonic()
        run = self._victim(node, seconds)
        sent = len(run["accepted_at"])
        return {"started": started, "messages": sent, "rate": sent / seconds, "refused": run["error_count"],
                "errors": run["errors"][:5], "cpu": cpu_seconds([node.daemon.pid]) - cpu}

    def _victim(self, node: RelayNode, seconds: float) -> dict:
        """The verified tenant's client for `seconds`: loadgen --duration, one connection per message."""
        out = self.root / "victim.out"
        argv = [sys.executable, str(HERE / "loadgen.py"), "--port", str(node.port), "--messages", "0",
                "--concurrency", str(VICTIM_CONCURRENCY), "--message-file", str(self.msg_crlf),
                "--sender", message.SENDER, "--recipient", message.RECIPIENT, "--starttls", "--user", USERNAME,
                "--password-file", str(node.password_file), "--duration", str(seconds),
                "--source-address", "127.0.0.1"]
        with open(out, "wb") as f:
            run = subprocess.run(argv, stdout=f, stderr=subprocess.PIPE, timeout=seconds + 180)
        try:
            return json.loads(out.read_text())
        except ValueError:
            raise RunFailed(f"the tenant's client exited {run.returncode}: {run.stderr.decode(errors='replace')[-1000:]}") \
                from None


def _store_rtt(direct: str, proxied: str) -> dict:
    """Median `SELECT 1` round trip (ms) to PostgreSQL, direct and through the proxy, and what the proxy adds."""
    out = {}
    for name, url in (("direct_ms", direct), ("proxied_ms", proxied)):
        with psycopg.connect(url, autocommit=True) as conn:
            times = []
            for _ in range(RTT_QUERIES):
                started = time.perf_counter()
                conn.execute("SELECT 1").fetchone()
                times.append((time.perf_counter() - started) * 1000)
        out[name] = round(statistics.median(times), 3)
    out["added_ms"] = round(out["proxied_ms"] - out["direct_ms"], 3)
    return out


def _children_cpu() -> float:
    """CPU seconds of this process's children that have exited: the injector of a run (and the heartbeat
    probe, a NOOP every 50 ms, when there is one)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def _ehlo_once(port: int, mode: str, nodelay: bool = True) -> float:
    """One connection: the seconds from writing EHLO to the end of its reply (after STARTTLS for "starttls").
    The client sets TCP_NODELAY as asyncio's clients (aiosmtplib, the load generator) do, unless `nodelay` is False."""
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if nodelay else 0)
    sock = tls.wrap_socket(raw) if mode == "implicit" else raw
    try:
        f = sock.makefile("rb")
        if reply_code(f) != "220":
            raise RunFailed("no 220 greeting")
        if mode == "starttls":
            sock.sendall(b"EHLO ehlo.example.com\r\n")
            reply_code(f)
            sock.sendall(b"STARTTLS\r\n")
            if reply_code(f) != "220":
                raise RunFailed("STARTTLS refused")
            f.close()
            sock = tls.wrap_socket(raw)
            f = sock.makefile("rb")
        started = time.perf_counter()
        sock.sendall(b"EHLO ehlo.example.com\r\n")
        code = reply_code(f)
        elapsed = time.perf_counter() - started
        if code != "250":
            raise RunFailed(f"EHLO answered {code}")
        sock.sendall(b"QUIT\r\n")
        f.close()
        return elapsed
    finally:
        sock.close()
        raw.close()
