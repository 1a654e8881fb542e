"""The receiving end of every path: Postfix's smtp-sink, counting what it received.

Why smtp-sink with -c and not a sink of our own: it is C, event driven and does almost no work
per message, so on a 2-core machine it takes little CPU from the system under test, and it is the
complement Postfix itself is benchmarked with. `-c` makes it write running counters
("sess=N quit=N mesg=N\\r") to stdout, flushed at every session end, QUIT and "."; a thread reads
that pipe and keeps the last `mesg` value. The counter is cumulative over the sink's life, so a run
waits for `count at start + N`: the clock stops when the sink has received the N-th message, not
when the injector is done (a relay that queues and answers 250 fast is not finished until it has
delivered). Dumping each message to a file (-d) would be far slower, so the dump mode is used only
for the short correctness check before the measured runs.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

from measure import Daemon, wait_port

_MESG = re.compile(rb"mesg=(\d+)\r")    # only complete updates, never a number cut by a read


class Sink:
    def __init__(self, workdir: Path, port: int, dump_dir: Path | None = None):
        self.port = port
        argv = ["smtp-sink", "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "postfix"]              # required as root; the dump files are written as this user
        if dump_dir is not None:
            argv += ["-d", f"{dump_dir}/%H%M%S."]
        argv += [f"127.0.0.1:{port}", "1024"]
        self.daemon = Daemon("smtp-sink", argv, workdir / "smtp-sink.log", stdout=subprocess.PIPE)
        self.count = 0
        self.target: int | None = None
        self.reached_at: float | None = None      # when the reader saw count >= target (precise end of a run)
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_port(port, 10, self.daemon.proc)

    def _read(self) -> None:
        out = self.daemon.proc.stdout
        tail = b""
        while chunk := out.read1(65536):
            found = _MESG.findall(tail + chunk)
            tail = chunk[-32:]
            if found:
                with self._changed:
                    self.count = max(self.count, int(found[-1]))
                    if self.target is not None and self.reached_at is None and self.count >= self.target:
                        self.reached_at = time.monotonic()
                    self._changed.notify_all()

    def arm(self, target: int) -> None:
        """Start watching for `target`: the reader thread stamps the moment the counter gets there."""
        with self._changed:
            self.target, self.reached_at = target, None
            if self.count >= target:
                self.reached_at = time.monotonic()

    def wait_for(self, target: int, timeout: float) -> float:
        """Block until the counter reaches `target`; return the monotonic time it was seen there."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self.daemon.alive():
                    raise TimeoutError(f"smtp-sink counted {self.count}, waited for {target}")
                self._changed.wait(min(left, 0.5))
            return time.monotonic()

    def settle(self, quiet: float = 1.0, timeout: float = 30.0) -> int:
        """Wait until the counter has not moved for `quiet` seconds (late duplicates would show here)."""
        deadline = time.monotonic() + timeout
        last, since = self.count, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if self.count != last:
                last, since = self.count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return self.count

    def stop(self) -> None:
        self.daemon.stop()
