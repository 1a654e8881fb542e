"""Heartbeat probe: is the relay's event loop free while it works? One connection to the submission port,
EHLO, then a NOOP every `--interval` seconds, each timed from its write to its reply.

NOOP touches neither the store nor the spool: its reply time is the time the worker's event loop took
to come round to this connection. A store call that blocks the loop (a PostgreSQL round trip made
synchronously) shows up here, however fast the throughput looks.

Run as its own process (started before the load and stopped after it by the harness) so that its
timing is not disturbed by the harness's threads. It prints "ready" once EHLO was answered and, when
SIGTERM or SIGINT ends it, one JSON object: the samples as [time.monotonic() when the NOOP was written,
milliseconds to its reply], and the same for a NOOP still waiting for its reply (the time it had waited).
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time

from measure import reply_code


class Stopped(Exception):
    """SIGTERM or SIGINT: the probe's time is up."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.05)
    args = p.parse_args()
    samples: list[list[float]] = []
    pending_since: float | None = None
    error = None
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = sock.makefile("rb")
        if reply_code(f) != "220":
            raise ConnectionError("no 220 greeting")
        sock.sendall(b"EHLO heartbeat.example.com\r\n")
        if reply_code(f) != "250":
            raise ConnectionError("EHLO refused")
        print("ready", flush=True)
        tick = time.monotonic()
        while True:
            pending_since = time.monotonic()
            sock.sendall(b"NOOP\r\n")
            code = reply_code(f)
            samples.append([round(pending_since, 4), round((time.monotonic() - pending_since) * 1000, 3)])
            pending_since = None
            if code != "250":
                raise ConnectionError(f"NOOP answered {code}")
            now = time.monotonic()
            tick += args.interval
            if tick < now:                      # the reply took longer than the interval: the next tick from now
                tick = now + args.interval - (now - tick) % args.interval
            time.sleep(tick - now)
    except Stopped:
        pass
    except (OSError, ConnectionError) as e:
        error = f"{type(e).__name__}: {e}"
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pending = None if pending_since is None else [round(pending_since, 4),
                                                  round((time.monotonic() - pending_since) * 1000, 3)]
    json.dump({"samples": samples, "pending": pending, "error": error}, sys.stdout)
    print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
