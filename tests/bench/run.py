"""Benchmark: the relay against Postfix on the same machine, in the same run (`make bench`).

Paths, messages of 4 KB, at concurrency 10 and 50, one connection per message ("new") and several
messages per connection ("reuse"):
  a  smtp-source -> smtp-sink                          (the harness's own ceiling)
  b  smtp-source -> Postfix -> smtp-sink
  c  smtp-source -> Postfix + OpenDKIM milter -> smtp-sink
  d  smtp-source -> relay (trusted network, DKIM, durable spool) -> smtp-sink
  e  loadgen STARTTLS + AUTH PLAIN, a person's password (scrypt) -> relay -> smtp-sink
  f  loadgen STARTTLS + AUTH PLAIN -> Postfix + Dovecot SASL (ARGON2ID, as costly as the relay's scrypt)
     + OpenDKIM milter -> smtp-sink
  g  loadgen STARTTLS + AUTH PLAIN, a generated credential (`credential add --generate`) -> relay -> smtp-sink
  d-pg     as d, the relay node's store on PostgreSQL (a private server started here, a database of its own)
  d-pg1ms  as d-pg, the store reached through tests/latency_proxy.py, 1 ms added to each round trip
  d-shaped as d, a node whose shaping rules (the shipped ones) have a site for the sink with a rate it does not
           reach: what shaping costs on the hot path (a site's lookup, its actions, its rate claimed in the store)
  d-mx     smtp-source -> relay -> the recipient domain's MX found through a real Unbound (Knot serving a signed
           zone) -> a private Postfix MX offering STARTTLS -> smtp-sink; `mta_sts = false`, `dane = false`:
           opportunistic STARTTLS, what the relay does for a domain without policies (tls_mx.py)
  d-secure as d-mx, same DNS, MX and sink, with `mta_sts = true`, `dane = true`, `[dns] dnssec = true`: the domain
           publishes an MTA-STS enforce policy and the MX host a DANE-EE TLSA record (3 1 1, its certificate's
           SPKI), so each copy has its policy looked up (in memory after the first fetch) and each new connection
           to the MX its certificate matched against the TLSA record (DANE takes precedence over MTA-STS)
Each run sends N messages (--messages), except f with one connection per message, where every message
pays a ~0.1 s password check (Dovecot checks the Argon2id hash at every login, see dovecot.py): it
sends --auth-messages (default N/10, at least 100); the report says which count each run had. (The
relay checks a person's password with scrypt once per worker and then remembers the verified login,
submission.auth_cache_ttl, so e runs the full N.) Rounds interleave the paths (a b c d e f g d-pg d-pg1ms
d-shaped d-mx d-secure, a b c ..., ...) so that drift of the machine hits all alike, and the ratios (d/b, d/c, e/d,
e/f, g/d, d-pg/d, d-pg1ms/d, d-shaped/d, d-secure/d-mx) are taken within each round. A run's clock starts when the
injector starts and stops when the sink has counted all of its messages. During the runs of d, d-pg and d-pg1ms the heartbeat
probe (heartbeat.py) times a NOOP every 50 ms on a connection of its own: a store that blocks the
relay's event loop shows there. After the rounds: the latency probe, the EHLO reply time (relay after STARTTLS,
relay implicit TLS, Postfix's smtpd), the floor of the relay's stack on its own event loop (floor.py),
and the flood probe (a verified tenant's rate while 50 addresses try wrong passwords; flood.py).
Everything runs on 127.0.0.1 (and 127.0.0.2-51 for the flood) only.

Usage (as root; `make bench BENCH_ARGS="..."` runs the same):
  .venv/bin/python tests/bench/run.py [--quick] [--messages N] [--auth-messages N] [--workers W] [--rounds R]
        [--paths a,b,c,d,e,f,g,d-pg,d-pg1ms,d-shaped,d-mx,d-secure] [--concurrency 10,50] [--modes new,reuse]
        [--skip PATH:MODE,...] [--latency-seconds S] [--floor-messages N] [--flood-seconds S] [--flood-only] [--keep]
        [--output FILE]
The modules: harness.py (the runs), postfix.py, dovecot.py, relay_node.py, sink.py, loadgen.py, flood.py,
floor.py, heartbeat.py, measure.py, check.py, message.py, report.py, tls_mx.py; tests/postgres.py (the PostgreSQL
server), tests/latency_proxy.py (the delay) and tests/dns_zone.py (Knot and Unbound) from the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
from harness import HEARTBEAT_PATHS, PATHS, SLOW_AUTH, Bench, RunFailed, config_name, log  # noqa: E402
from measure import cpu_model, openssl_rsa2048  # noqa: E402
from postfix import ensure_packages  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Relay vs Postfix benchmark on 127.0.0.1 (see tests/bench/run.py)")
    p.add_argument("--quick", action="store_true", help="1000 messages per run, one round, shorter probes")
    p.add_argument("--messages", type=int, help="messages per run (default 5000; 1000 with --quick)")
    p.add_argument("--auth-messages", type=int,
                   help=f"messages per run of {', '.join(SLOW_AUTH)} with one connection per message, where each "
                        f"message pays a ~0.1 s password check (default --messages / 10, at least 100)")
    p.add_argument("--workers", type=int, default=2, help="relay node.workers (default 2)")
    p.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    p.add_argument("--concurrency", default="10,50", help="comma-separated concurrencies (default 10,50)")
    p.add_argument("--modes", default="new,reuse",
                   help="new (one connection per message), reuse (several per connection), or both (default)")
    p.add_argument("--skip", default="", metavar="PATH:MODE,...",
                   help="leave out some path/mode pairs, e.g. c:reuse")
    p.add_argument("--latency-seconds", type=float, help="length of each latency probe (default 30; 10 with --quick)")
    p.add_argument("--floor-messages", type=int,
                   help="messages of each part of floor.py's measurement (default 3000; 1000 with --quick; 0: none)")
    p.add_argument("--flood-seconds", type=float,
                   help="length of the flood in each of the flood probe's two variants (default 60; 30 with --quick; "
                        "0: no flood probe), in windows of 5 s that alternate with as many windows of the tenant alone")
    p.add_argument("--flood-only", action="store_true", help="only the flood probe (a sink and its relay nodes)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs, queues)")
    p.add_argument("--output", type=Path, default=HERE / "results" / "latest.json")
    args = p.parse_args(argv)
    args.messages = args.messages or (1000 if args.quick else 5000)
    args.auth_messages = args.auth_messages or max(100, args.messages // 10)
    args.floor_messages = (1000 if args.quick else 3000) if args.floor_messages is None else args.floor_messages
    args.flood_seconds = (30 if args.quick else 60) if args.flood_seconds is None else args.flood_seconds
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.latency_seconds = args.latency_seconds or (10 if args.quick else 30)
    args.paths = [x for x in args.paths.replace(" ", "").split(",") if x]
    if not args.paths or set(args.paths) - set(PATHS):
        p.error(f"--paths takes a comma-separated subset of {','.join(PATHS)}")
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.modes = [x for x in args.modes.replace(" ", "").split(",") if x]
    args.skip = {tuple(x.split(":", 1)) for x in args.skip.replace(" ", "").split(",") if x}
    if any(len(x) != 2 or x[0] not in PATHS or x[1] not in ("new", "reuse") for x in args.skip):
        p.error("--skip takes PATH:MODE pairs such as c:reuse")
    if not args.modes or set(args.modes) - {"new", "reuse"}:
        p.error("--modes takes new, reuse or new,reuse")
    if args.flood_only:
        args.paths, args.floor_messages = [], 0
    return args


def messages_for(args: argparse.Namespace, path: str, reuse: bool) -> int:
    """Messages of one run: fewer where every message pays a slow password check (SLOW_AUTH, new connections)."""
    return args.auth_messages if path in SLOW_AUTH and not reuse else args.messages


def messages_note(args: argparse.Namespace) -> str:
    slow = [p for p in args.paths if p in SLOW_AUTH]
    if not slow or "new" not in args.modes or args.auth_messages == args.messages:
        return str(args.messages)
    return (f"{args.messages}, except {', '.join(slow)} with one connection per message: {args.auth_messages} "
            f"(--auth-messages)")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: Postfix's master, smtp-sink -u and OpenDKIM's UserID need it (no system "
                         "configuration is changed; everything lives in a temp dir)")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):   # SIGINT too: a shell may start us with it ignored
        signal.signal(signum, _interrupt)
    ensure_packages(log)
    rsa = openssl_rsa2048()          # before any service starts: what one core does alone
    log("openssl speed -seconds 1 rsa2048: " + (f"{rsa['sign_per_s']:.0f} sign/s, {rsa['verify_per_s']:.0f} verify/s"
                                                if "sign_per_s" in rsa else f"failed: {rsa['error']}"))
    root = Path(tempfile.mkdtemp(prefix="websofttt-bench-"))
    root.chmod(0o755)                 # Postfix's and OpenDKIM's users must reach their files below it
    bench = Bench(args, root)
    configs = [(c, mode == "reuse") for c in args.concurrency for mode in args.modes]
    results = {"cpu": cpu_model(), "kernel": platform.release(), "python": platform.python_version(),
               "postfix": _version(["postconf", "-d", "-h", "mail_version"]),
               "opendkim": _version(["opendkim", "-V"]).splitlines()[0] if shutil.which("opendkim") else "",
               "dovecot": _version(["dovecot", "--version"]) if "f" in args.paths else "",
               "loop": _loop_name(), "openssl_rsa2048": rsa,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "message_bytes": len(bench.msg),
               "messages": args.messages, "auth_messages": args.auth_messages, "messages_note": messages_note(args),
               "rounds": args.rounds, "relay_workers": args.workers,
               "skipped": sorted(":".join(x) for x in args.skip), "argv": sys.argv[1:], "code": _code_version(),
               "paths": {p: PATHS[p] for p in args.paths}, "runs": [], "checks": {}, "latency": {}, "failures": {}}
    log(f"temp dir {root}; messages per run: {messages_note(args)}; {args.rounds} round(s), paths "
        f"{','.join(args.paths) or 'none'}; relay event loop {results['loop']}")
    ok = False
    try:
        if args.flood_only:
            bench.start_sink()
        else:
            dump_dir = root / "dump"
            dump_dir.mkdir()
            if os.geteuid() == 0:
                shutil.chown(dump_dir, "postfix")      # smtp-sink writes its dumps after dropping to this user
            bench.start(dump_dir)
            results["password_check"] = {k: v for k, v in (bench.password_costs or {}).items() if k != "hash"}
            results["store_round_trip"] = bench.store_rtt
            results["checks"] = bench.correctness(dump_dir)
            bench.swap_sink()
        warm = min(args.messages, 200)
        for path in args.paths:
            if path not in bench.broken:
                try:
                    bench.run(path, warm, 10, True)
                except RunFailed as e:
                    bench.fail(path, f"warm-up: {e}")
        for rnd in range(1, args.rounds + 1):
            for concurrency, reuse in configs:
                for path in args.paths:
                    if path in bench.broken or (path, "reuse" if reuse else "new") in args.skip:
                        continue
                    try:
                        r = bench.run(path, messages_for(args, path, reuse), concurrency, reuse,
                                      heartbeat=path in HEARTBEAT_PATHS)
                    except RunFailed as e:
                        bench.fail(path, f"round {rnd} {config_name(concurrency, reuse)}: {e}")
                        continue
                    r["round"] = rnd
                    results["runs"].append(r)
                    beat = r.get("heartbeat") or {}
                    log(f"round {rnd} {config_name(concurrency, reuse):9} {path}: {r['rate']:8.1f} msg/s "
                        f"({r['seconds']:.2f} s, injected in {r['inject_seconds']:.2f} s"
                        + (f", {r['cpu_ms_per_message']:.2f} ms CPU/msg" if r["cpu_ms_per_message"] is not None else "")
                        + (f", NOOP p50 {beat['p50_ms']:.2f} ms p99 {beat['p99_ms']:.2f} ms of {beat['count']}"
                           if beat.get("count") else "") + ")")
        probes = [(p, p) for p in "bcdefg" if p in args.paths and p not in bench.broken]
        if "a" in args.paths and "d" in args.paths:
            probes.insert(0, ("a", "d"))     # the probe's own floor: straight into the sink at the relay's rate
        for path, rate_of in probes:
            rates = report.medians(results["runs"], rate_of)
            if not rates:
                continue
            try:
                results["latency"][path] = bench.latency(path, max(rates.values()), args.messages,
                                                         args.latency_seconds)
                log(f"latency {path}: {results['latency'][path]}")
            except RunFailed as e:
                results["latency"][path] = {"error": str(e)}
                log(f"latency {path} FAILED: {e}")
        if not args.flood_only:
            results["ehlo"] = bench.ehlo_times()
            for name, v in results["ehlo"].items():
                log(f"EHLO {name}: {v}")
        if args.floor_messages:
            import floor
            try:
                results["floor"] = floor.measure(args.floor_messages)
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                results["floor"] = {"loop": results["loop"], "error": f"{type(e).__name__}: {e}"}
                log(f"floor FAILED: {e}")
        if args.flood_seconds and ("e" in args.paths or args.flood_only):
            results["flood"] = {}
            for users in ("unknown", "victim"):
                try:
                    results["flood"][users] = bench.flood_probe(users, args.flood_seconds)
                except (RunFailed, RuntimeError, subprocess.SubprocessError) as e:
                    results["flood"][users] = {"error": f"{type(e).__name__}: {e}"}
                for line in report.render_flood(users, results["flood"][users]):
                    log(line.strip())
        ok = not bench.broken
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        results["failures"]["interrupted"] = "yes"
    finally:
        bench.stop()
        results["failures"] |= bench.broken
        results["summary"] = report.summarise(results["runs"], args.paths, configs)
        results["ratios"] = report.ratios(results["runs"], configs)
        results["cpu_per_message"] = report.cpu_per_message(results["runs"])
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(report.render(results, args.paths, configs), flush=True)
        log(f"results written to {args.output}")
        if args.keep or not ok:
            log(f"logs and configs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


def _loop_name() -> str:
    """The event loop the relay's workers and floor.py run on (relay/eventloop.py, WEBSOFTTT_LOOP)."""
    try:
        from relay import eventloop
        return eventloop.name()
    except Exception as e:              # an unknown WEBSOFTTT_LOOP: the relay itself will refuse to start
        return f"? ({e})"


def _code_version() -> dict:
    """Which relay was measured: the commit, and the files of the work tree that differ from it."""
    top = HERE.parent.parent
    head = _version(["git", "-C", str(top), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(top), "status", "--short", "--untracked-files=no", "--",
                      "relay", "policy", "inbound", "pyproject.toml"])
    return {"commit": head, "modified": dirty.splitlines()}


def _version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
