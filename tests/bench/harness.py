"""The services of one benchmark run (sink, two Postfix instances, OpenDKIM, the relay) and the runs against them.

`Bench.run` is one measured run: start the injector, stop the clock when the sink has counted all N,
and take the servers' CPU, memory and the load from outside around it. Everything it starts is
stopped by pid in `Bench.stop`, which run.py calls in a finally block.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import check
import message
from measure import Daemon, ForeignLoad, RssSampler, cpu_seconds, free_port, percentile
from postfix import OpenDKIM, Postfix
from relay_node import USERNAME, RelayNode
from sink import Sink

HERE = Path(__file__).resolve().parent

PATHS = {
    "a": "smtp-source -> smtp-sink",
    "b": "smtp-source -> Postfix -> sink",
    "c": "smtp-source -> Postfix+OpenDKIM -> sink",
    "d": "smtp-source -> relay -> sink",
    "e": "loadgen TLS+AUTH -> relay -> sink",
}
STALL_SECONDS = 60          # a run whose sink count does not move for this long has failed
PER_DESTINATION = 10        # the relay's default delivery.per_destination (per worker)
LATENCY_CONNECTIONS = 20    # pooled client connections of the latency probe (opened before its clock starts)


class RunFailed(Exception):
    """A path did not deliver its N messages; the message says what the server answered."""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def config_name(concurrency: int, reuse: bool) -> str:
    return f"c{concurrency} {'reuse' if reuse else 'new'}"


class Bench:
    """The services of one benchmark (sink, Postfix x2, OpenDKIM, relay) and the runs against them."""

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
        self.relay: RelayNode | None = None
        self.injector: Daemon | None = None
        self.broken: dict[str, str] = {}
        self.sink_port = 0

    # services
    def start(self, dump_dir: Path) -> None:
        paths = self.args.paths
        self.sink_port = free_port()
        self.sink = Sink(self.root, self.sink_port, dump_dir)
        limit = self.args.workers * PER_DESTINATION
        if "b" in paths:
            self.postfix = Postfix(self.root, "postfix", self.sink_port, limit)
            log(f"Postfix on 127.0.0.1:{self.postfix.port} (config {self.postfix.conf})")
        if "c" in paths:
            self.opendkim = OpenDKIM(self.root)
            self.postfix_dkim = Postfix(self.root, "postfix-dkim", self.sink_port, limit, self.opendkim.socket)
            log(f"Postfix+OpenDKIM on 127.0.0.1:{self.postfix_dkim.port} (milter {self.opendkim.socket})")
        if "d" in paths or "e" in paths:
            self.relay = RelayNode(self.root, self.sink_port, self.args.workers)
            log(f"relay on 127.0.0.1:{self.relay.port} with {self.args.workers} workers (data {self.relay.data})")

    def swap_sink(self) -> None:
        """Replace the dumping sink of the check by the counting one, on the same port (the configs name it)."""
        self.sink.stop()
        self.sink = Sink(self.root, self.sink_port)

    def stop(self) -> None:
        for service in (self.injector, self.relay, self.postfix_dkim, self.opendkim, self.postfix, self.sink):
            if service is None:
                continue
            try:
                service.stop()
            except Exception as e:    # keep stopping the others
                log(f"while stopping {type(service).__name__}: {e}")

    def port(self, path: str) -> int:
        return {"a": self.sink_port, "b": getattr(self.postfix, "port", 0),
                "c": getattr(self.postfix_dkim, "port", 0)}.get(path) or self.relay.port

    def cpu_roots(self, path: str) -> list[int]:
        """The process trees whose CPU a path costs: the server, plus OpenDKIM for c; none for a."""
        return {"a": [], "b": [self.postfix.daemon.pid] if self.postfix else [],
                "c": [self.postfix_dkim.daemon.pid, self.opendkim.daemon.pid] if self.postfix_dkim else [],
                "d": [self.relay.daemon.pid] if self.relay else [],
                "e": [self.relay.daemon.pid] if self.relay else []}[path]

    # injection
    def inject(self, path: str, n: int, concurrency: int, reuse: bool, rate: float | None = None) -> Daemon:
        out = self.root / "injector.out"
        out.write_bytes(b"")
        if path == "e" or rate is not None:      # the load generator (the latency probe too: it times DATA)
            argv = [sys.executable, str(HERE / "loadgen.py"), "--port", str(self.port(path)), "--messages", str(n),
                    "--concurrency", str(concurrency), "--message-file", str(self.msg_crlf),
                    "--sender", message.SENDER, "--recipient", message.RECIPIENT]
            if reuse:
                argv.append("--reuse")
            if path == "e":
                argv += ["--starttls", "--user", USERNAME, "--password-file", str(self.relay.password_file)]
            if rate is not None:
                argv += ["--rate", f"{rate:.3f}"]
        else:
            # smtp-source(1): -s parallel sessions, -m messages in all, -d: don't disconnect after a
            # message but send the next one over the same connection (so "reuse" = -d, and each of
            # the -s sessions keeps its connection for ~N/s messages); without -d, one per message.
            argv = ["smtp-source", "-s", str(concurrency), "-m", str(n), *(["-d"] if reuse else []),
                    "-F", str(self.msg_lf), "-f", message.SENDER, "-t", message.RECIPIENT,
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
        if path in "de" and self.relay is not None:
            text += f" | relay log: {' | '.join(self.relay.refusals())}"
        return text

    def run(self, path: str, n: int, concurrency: int, reuse: bool, rate: float | None = None) -> dict:
        """One measured run: inject N, stop the clock when the sink has them all; CPU and RSS around it."""
        try:
            return self._run(path, n, concurrency, reuse, rate)
        finally:
            if self.injector is not None:
                self.injector.stop()         # a failed run must not leave its injector sending
                self.injector = None

    def _run(self, path: str, n: int, concurrency: int, reuse: bool, rate: float | None) -> dict:
        roots = self.cpu_roots(path)
        sink = self.sink
        base = sink.count
        sink.arm(base + n)
        cpu_before = cpu_seconds(roots)
        timeout = 120 + n * 1.0
        with RssSampler(roots) as rss, ForeignLoad() as foreign:
            started = time.monotonic()
            injector = self.inject(path, n, concurrency, reuse, rate)
            injected = None
            last_count, last_move = sink.count, started
            while sink.reached_at is None:
                now = time.monotonic()
                if injected is None and injector.proc.poll() is not None:
                    injected = now
                    if injector.proc.returncode != 0:
                        time.sleep(1)
                        raise RunFailed(self.injector_failure(path))
                if sink.count != last_count:
                    last_count, last_move = sink.count, now
                elif now - last_move > STALL_SECONDS or now - started > timeout:
                    raise RunFailed(f"sink stuck at {sink.count - base} of {n} messages; "
                                    f"{self.injector_failure(path) if injected else 'injector still running'}")
                time.sleep(0.02)
            finished = sink.reached_at
            injector.proc.wait(60)
            injected = injected or time.monotonic()
            if injector.proc.returncode != 0:
                raise RunFailed(self.injector_failure(path))
            sink.settle(quiet=1.0)       # trailing work (queue clean-up, records) is part of the cost
            cpu = cpu_seconds(roots) - cpu_before if roots else None
        seconds = finished - started
        result = {"path": path, "concurrency": concurrency, "reuse": reuse, "messages": n,
                  "seconds": round(seconds, 3), "rate": round(n / seconds, 2),
                  "inject_seconds": round(injected - started, 3),
                  "cpu_seconds": None if cpu is None else round(cpu, 3),
                  "cpu_ms_per_message": None if cpu is None else round(cpu * 1000 / n, 3),
                  "peak_rss_mib": round(rss.peak_kib / 1024, 1) if roots else None,
                  "peak_pss_mib": round(rss.peak_pss_kib / 1024, 1) if roots else None,
                  "extra_at_sink": sink.count - base - n,
                  "foreign_cpu_share": round(foreign.share, 3)}
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
        if self.relay:
            records["s1._domainkey.websofttt.com"] = self.relay.dns_txt()
        seen: set[Path] = set()
        verdicts = {}
        for path in self.args.paths:
            try:
                self.run(path, 2, 1, False)
            except RunFailed as e:
                self.fail(path, f"correctness check: {e}")
                verdicts[path] = f"FAIL: {e}"
                continue
            time.sleep(0.5)       # smtp-sink closes the dump file after it counted the "."
            dumps = check.new_dumps(dump_dir, seen)
            results = [check.check_message(path, p.read_bytes(), records) for p in dumps]
            bad = [r for r in results if not r.startswith("ok")]
            verdicts[path] = (bad[0] if bad else results[0] if results else "FAIL: nothing dumped") + \
                f" ({len(dumps)} messages)"
            log(f"check {path}: {verdicts[path]}")
        return verdicts

    def fail(self, path: str, why: str) -> None:
        """Take a failed path out of the benchmark; a failed relay is stopped so that its retries
        cannot reach the sink during another path's run."""
        log(f"path {path} FAILED: {why}")
        self.broken[path] = why
        if path in "de" and self.relay is not None and all(p in self.broken for p in "de" if p in self.args.paths):
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
