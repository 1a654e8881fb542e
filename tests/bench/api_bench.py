"""Benchmark of the tenant API (`make bench` runs it after run.py): sending over HTTP next to SMTP, and what a
webhook subscribed to every event costs the relay's throughput.

One relay node (relay_node.py, SQLite store, the default policy, DKIM, durable spool) in front of smtp-sink
(sink.py), 4 KB messages (message.py), a webhook receiver on loopback answering 204. Rounds interleave three
runs so that drift of the machine hits all alike; the ratios are taken within each round, and their medians
reported:
  smtp     smtp-source, C sessions each reusing its connection (path d "reuse" of run.py)
  http     POST /v1/messages with the raw message, C kept-alive connections of one aiohttp client
  smtp+wh  as smtp, the tenant's webhook subscribed to every event (added before the run, removed after);
           the run ends when the sink has every message; the receiver must then get every `delivered` event
A run's clock starts with the injector and stops when the sink has counted its N-th message.

Usage (as root, for smtp-sink): .venv/bin/python tests/bench/api_bench.py [--messages N] [--concurrency C]
    [--rounds R] [--workers W] [--output FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

import message  # noqa: E402
from measure import Daemon, cpu_seconds, free_port  # noqa: E402
from relay_node import RATE, TENANT, RelayNode  # noqa: E402
from sink import Sink  # noqa: E402


class Receiver:
    """The webhook endpoint: counts the events it is posted, answers 204."""

    def __init__(self) -> None:
        self.port, self.count = free_port(), 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        async def hook(request: web.Request) -> web.Response:
            await request.read()
            self.count += 1
            return web.Response(status=204)

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/hook", hook)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            ready.set()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())
        self.loop.run_forever()


async def post_all(port: int, key: str, n: int, concurrency: int, raw: bytes) -> list[str]:
    """N sends over `concurrency` kept-alive connections; the errors (none expected)."""
    body = json.dumps({"envelope": {"from": message.SENDER, "to": [message.RECIPIENT]},
                       "raw": base64.b64encode(raw).decode()}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    left, errors = n, []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as client:
        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with client.post(f"http://127.0.0.1:{port}/v1/messages", data=body, headers=headers) as r:
                    if r.status != 202:
                        errors.append(f"{r.status} {await r.text()}"[:200])
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


class ApiBench:
    def __init__(self, args: argparse.Namespace, root: Path):
        self.args, self.root = args, root
        self.raw = message.build()
        self.msg_lf = root / "message-lf.eml"
        message.write_for_smtp_source(self.raw, self.msg_lf)
        self.sink = Sink(root, free_port())
        self.receiver = Receiver()
        self.node = RelayNode(root, self.sink.port, args.workers,
                              extra_config='[webhooks]\nallow_private_targets = true\nretry_first = "1s"\n',
                              api_rate=RATE)
        self.key = self.node._cli("apikey", "add", TENANT, "--name", "bench", "--scope", "write").strip()

    def run(self, kind: str) -> dict:
        n, c = self.args.messages, self.args.concurrency
        hook = None
        if kind == "smtp+wh":
            self.node._cli("webhook", "add", TENANT, f"http://127.0.0.1:{self.receiver.port}/hook")
            hook = json.loads(self.node._cli("webhook", "list", TENANT, "--json"))[-1]["id"]
            events_before = self.receiver.count
        base = self.sink.count
        self.sink.arm(base + n)
        cpu_before = cpu_seconds([self.node.daemon.pid])
        started = time.monotonic()
        if kind == "http":
            errors = asyncio.run(post_all(self.node.http_port, self.key, n, c, self.raw))
            if errors:
                raise RuntimeError(f"http: {len(errors)} errors, first: {errors[0]}")
        else:
            Daemon("smtp-source", ["smtp-source", "-s", str(c), "-m", str(n), "-d", "-F", str(self.msg_lf), "-f",
                                   message.SENDER, "-t", message.RECIPIENT, "-M", "source.example.com",
                                   f"127.0.0.1:{self.node.port}"], self.root / "injector.log").proc.wait(600)
        finished = self.sink.wait_for(base + n, 600)
        seconds = finished - started
        self.sink.settle(quiet=1.0)
        result = {"kind": kind, "messages": n, "seconds": round(seconds, 3), "rate": round(n / seconds, 1),
                  "cpu_ms_per_message": round((cpu_seconds([self.node.daemon.pid]) - cpu_before) * 1000 / n, 3)}
        if hook is not None:
            deadline = time.monotonic() + 120
            while self.receiver.count - events_before < n and time.monotonic() < deadline:
                time.sleep(0.2)
            result["webhook_events"] = self.receiver.count - events_before
            self.node._cli("webhook", "remove", TENANT, str(hook))
        return result

    def stop(self) -> None:
        self.node.stop()
        self.sink.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="websofttt-api-bench-") as tmp:
        bench = ApiBench(args, Path(tmp))
        try:
            bench.run("smtp")                                  # warm-up: caches, the first scrypt, WAL
            rounds = [{kind: bench.run(kind) for kind in ("smtp", "http", "smtp+wh")} for _ in range(args.rounds)]
        finally:
            bench.stop()
    ratio = {"http/smtp": statistics.median(r["http"]["rate"] / r["smtp"]["rate"] for r in rounds),
             "smtp+wh/smtp": statistics.median(r["smtp+wh"]["rate"] / r["smtp"]["rate"] for r in rounds)}
    rates = {kind: statistics.median(r[kind]["rate"] for r in rounds) for kind in rounds[0]}
    report = {"messages": args.messages, "concurrency": args.concurrency, "workers": args.workers,
              "median_rate": rates, "median_ratio": {k: round(v, 3) for k, v in ratio.items()}, "rounds": rounds}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text)
    lost = [r["smtp+wh"]["webhook_events"] for r in rounds if r["smtp+wh"]["webhook_events"] < args.messages]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
