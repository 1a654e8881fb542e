"""Benchmark: the relay against Postfix on the same machine, in the same run (`make bench`).

Paths, each N messages of 4 KB, at concurrency 10 and 50, one connection per message ("new") and
several messages per connection ("reuse"):
  a  smtp-source -> smtp-sink                          (the harness's own ceiling)
  b  smtp-source -> Postfix -> smtp-sink
  c  smtp-source -> Postfix + OpenDKIM milter -> smtp-sink
  d  smtp-source -> relay (trusted network, DKIM, durable spool) -> smtp-sink
  e  loadgen STARTTLS + AUTH PLAIN -> relay -> smtp-sink
Rounds interleave the paths (a b c d e, a b c d e, ...) so that drift of the machine hits all alike,
and the ratios d/b and d/c are taken within each round. A run's clock starts when the injector
starts and stops when the sink has counted all N messages. Everything runs on 127.0.0.1 only.

Usage (as root; `make bench BENCH_ARGS="..."` runs the same):
  .venv/bin/python tests/bench/run.py [--quick] [--messages N] [--workers W] [--rounds R] [--paths a,b,c,d,e]
        [--concurrency 10,50] [--modes new,reuse] [--skip e:new] [--latency-seconds S] [--keep] [--output FILE]
The modules: harness.py (the runs), postfix.py, relay_node.py, sink.py, loadgen.py, measure.py, check.py,
message.py, report.py.
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
from harness import PATHS, Bench, RunFailed, config_name, log  # noqa: E402
from measure import cpu_model  # noqa: E402
from postfix import ensure_packages  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Relay vs Postfix benchmark on 127.0.0.1 (see tests/bench/run.py)")
    p.add_argument("--quick", action="store_true", help="1000 messages per run and one round")
    p.add_argument("--messages", type=int, help="messages per run (default 5000; 1000 with --quick)")
    p.add_argument("--workers", type=int, default=2, help="relay node.workers (default 2)")
    p.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    p.add_argument("--paths", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e")
    p.add_argument("--concurrency", default="10,50", help="comma-separated concurrencies (default 10,50)")
    p.add_argument("--modes", default="new,reuse",
                   help="new (one connection per message), reuse (several per connection), or both (default)")
    p.add_argument("--skip", default="", metavar="PATH:MODE,...",
                   help="leave out some path/mode pairs, e.g. e:new (TLS+AUTH per message is bound by the "
                        "relay's scrypt check, ~6 msg/s here: 5000 messages take ~14 min per run)")
    p.add_argument("--latency-seconds", type=float, help="length of each latency probe (default 30; 10 with --quick)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs, queues)")
    p.add_argument("--output", type=Path, default=HERE / "results" / "latest.json")
    args = p.parse_args(argv)
    args.messages = args.messages or (1000 if args.quick else 5000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.latency_seconds = args.latency_seconds or (10 if args.quick else 30)
    args.paths = [x for x in args.paths.replace(" ", "").split(",") if x]
    if not args.paths or set(args.paths) - set(PATHS):
        p.error(f"--paths takes a comma-separated subset of {','.join(PATHS)}")
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.modes = [x for x in args.modes.replace(" ", "").split(",") if x]
    args.skip = {tuple(x.split(":", 1)) for x in args.skip.replace(" ", "").split(",") if x}
    if any(len(x) != 2 or x[0] not in PATHS or x[1] not in ("new", "reuse") for x in args.skip):
        p.error("--skip takes PATH:MODE pairs such as e:new")
    if not args.modes or set(args.modes) - {"new", "reuse"}:
        p.error("--modes takes new, reuse or new,reuse")
    return args


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
    root = Path(tempfile.mkdtemp(prefix="websofttt-bench-"))
    root.chmod(0o755)                 # Postfix's and OpenDKIM's users must reach their files below it
    bench = Bench(args, root)
    configs = [(c, mode == "reuse") for c in args.concurrency for mode in args.modes]
    results = {"cpu": cpu_model(), "kernel": platform.release(), "python": platform.python_version(),
               "postfix": _version(["postconf", "-d", "-h", "mail_version"]),
               "opendkim": _version(["opendkim", "-V"]).splitlines()[0] if shutil.which("opendkim") else "",
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "message_bytes": len(bench.msg),
               "messages": args.messages, "rounds": args.rounds, "relay_workers": args.workers,
               "skipped": sorted(":".join(x) for x in args.skip), "argv": sys.argv[1:], "code": _code_version(),
               "paths": {p: PATHS[p] for p in args.paths}, "runs": [], "checks": {}, "latency": {}, "failures": {}}
    log(f"temp dir {root}; {args.messages} messages per run, {args.rounds} round(s), paths {','.join(args.paths)}")
    ok = False
    try:
        dump_dir = root / "dump"
        dump_dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(dump_dir, "postfix")      # smtp-sink writes its dumps after dropping to this user
        bench.start(dump_dir)
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
                        r = bench.run(path, args.messages, concurrency, reuse)
                    except RunFailed as e:
                        bench.fail(path, f"round {rnd} {config_name(concurrency, reuse)}: {e}")
                        continue
                    r["round"] = rnd
                    results["runs"].append(r)
                    log(f"round {rnd} {config_name(concurrency, reuse):9} {path}: {r['rate']:8.1f} msg/s "
                        f"({r['seconds']:.2f} s, injected in {r['inject_seconds']:.2f} s"
                        + (f", {r['cpu_ms_per_message']:.2f} ms CPU/msg" if r["cpu_ms_per_message"] is not None else "")
                        + ")")
        probes = [(p, p) for p in "bcde" if p in args.paths and p not in bench.broken]
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
