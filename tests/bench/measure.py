"""Process bookkeeping for the benchmark: start, find, measure and stop the daemons it runs.

Every daemon is started in its own session (so its process group is ours alone) and stopped by pid:
SIGTERM to the process that owns the service, then SIGKILL to the process group and to any
descendant still alive. Nothing is ever found or killed by name.

CPU time is read from /proc/PID/stat. A process tree loses the CPU of children that exit between
two samples unless they are counted somewhere, so each live process contributes
utime + stime + cutime + cstime: a reaped child's time is in its parent's cutime/cstime, a live
child's in its own utime/stime, and nothing is counted twice.
"""
from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel picks it)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` different free ports: all are held until all are picked (one at a time, the kernel may give
    the same port twice, and a node given one port for two listeners splits its connections between them)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Until 127.0.0.1:port accepts a connection; fail early if `proc` died meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids, from one scan of /proc (processes come and go: vanished ones are skipped)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        fields = _stat_fields(entry.name) if entry.name.isdigit() else None
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """/proc/PID/stat after the command name (field 3 of stat(5) first); None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()


def tree(roots: Iterable[int]) -> list[int]:
    """The roots and all their live descendants."""
    children = _children_map()
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(roots: Iterable[int]) -> float:
    """utime + stime + cutime + cstime of the whole tree under `roots`, in seconds (see module doc)."""
    ticks = 0
    for pid in tree(roots):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(x) for x in fields[11:15])   # utime stime cutime cstime (fields 14-17 of stat(5))
    return ticks / CLK_TCK


def system_busy_seconds() -> float:
    """CPU time all CPUs spent not idle (user, nice, system, irq, softirq, steal), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class ForeignLoad:
    """How much CPU processes that are not ours used during a run (other users' test suites, CI...).

    Everything this benchmark starts is a descendant of the harness, so the machine's busy time
    minus the harness tree's CPU is what others took. Reported as a share of the machine's CPUs:
    0.5 on a 2-CPU machine means one whole core was busy elsewhere, and the figures are suspect.
    """

    def __enter__(self) -> ForeignLoad:
        self.started = time.monotonic()
        self._busy, self._ours = system_busy_seconds(), cpu_seconds([os.getpid()])
        return self

    def __exit__(self, *exc) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        foreign = (system_busy_seconds() - self._busy) - (cpu_seconds([os.getpid()]) - self._ours)
        self.share = max(0.0, foreign / elapsed / (os.cpu_count() or 1))


def memory_kib(roots: Iterable[int]) -> tuple[int, int]:
    """(RSS, PSS) summed over the tree, in KiB.

    RSS counts a page shared by N processes N times (forked workers, 50 smtpd processes mapping
    the same libraries), so the sum overstates what a many-process server uses; PSS charges each
    process 1/N of a shared page, so its sum is the tree's real share of memory. Both are kept.
    """
    rss = pss = 0
    for pid in tree(roots):
        rss += _field_kib(f"/proc/{pid}/status", "VmRSS:")
        pss += _field_kib(f"/proc/{pid}/smaps_rollup", "Pss:")
    return rss, pss


def _field_kib(path: str, name: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class RssSampler:
    """Samples the summed RSS and PSS of some process trees in a thread while a run lasts; keeps the peaks."""

    def __init__(self, roots: Sequence[int], interval: float = 0.5):
        self.roots, self.interval = list(roots), interval
        self.peak_kib = self.peak_pss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        rss, pss = memory_kib(self.roots)
        self.peak_kib, self.peak_pss_kib = max(self.peak_kib, rss), max(self.peak_pss_kib, pss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


class Daemon:
    """One started process (and its descendants), stopped by pid whatever happens."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None, stdout: Path | int | None = None):
        """stdout: None (into the log), a Path (its own file) or subprocess.PIPE."""
        self.name = name
        self.log = log
        self._log_file = open(log, "ab")
        self._out_file = open(stdout, "wb") if isinstance(stdout, Path) else None
        out = self._out_file or (stdout if stdout is not None else self._log_file)
        self.proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=self._log_file, start_new_session=True)
        self.pid = self.proc.pid

    def pids(self) -> list[int]:
        return tree([self.pid])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, term_pid: int | None = None, grace: float = 10.0) -> None:
        """SIGTERM to `term_pid` (default: the started process), then SIGKILL to what is left of the tree."""
        if self.proc.poll() is None:
            left = self.pids()
            try:
                os.kill(term_pid or self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            for pid in [self.pid, *left]:
                _kill_if_ours(pid, self.pid)
            try:
                os.killpg(self.pid, signal.SIGKILL)     # our own session: the group id is our pid
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(5)
        self._log_file.close()
        if self._out_file is not None:
            self._out_file.close()


def _kill_if_ours(pid: int, session: int) -> None:
    """SIGKILL `pid` only while it is still in the session we started (a recycled pid is left alone)."""
    try:
        if os.getsid(pid) == session:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def summary(values: Sequence[float]) -> dict[str, float]:
    """median, min and max of the per-round figures."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def cpu_model() -> str:
    """The CPU model and the number of logical CPUs, from /proc/cpuinfo."""
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]
    return f"{models[0] if models else 'unknown'} ({len(models) or os.cpu_count()} logical CPUs)"


def openssl_rsa2048() -> dict:
    """`openssl speed -seconds 1 rsa2048`: RSA-2048 signatures and verifications per second on one core."""
    try:
        run = subprocess.run(["openssl", "speed", "-seconds", "1", "rsa2048"], capture_output=True, text=True,
                             timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}
    lines = run.stdout.splitlines()
    header = next((x.split() for x in lines if "sign/s" in x and "verify/s" in x), None)
    row = next((x for x in lines if x.startswith("rsa 2048 bits")), None)
    if header is None or row is None:
        return {"error": f"unexpected output: {run.stdout.strip()[-300:]} {run.stderr.strip()[-300:]}"}
    values = row[len("rsa 2048 bits"):].split()
    by_name = dict(zip(header, values))     # sign verify sign/s verify/s (and more columns in newer OpenSSL)
    version = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    return {"sign_per_s": float(by_name["sign/s"]), "verify_per_s": float(by_name["verify/s"]),
            "openssl": " ".join(version.split()[:2])}


def reply_code(f) -> str:
    """The code of one complete SMTP reply read from a file object (multiline replies to their last line)."""
    while True:
        line = f.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        if line[3:4] != b"-":
            return line[:3].decode("ascii", "replace")
