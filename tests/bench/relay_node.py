"""The system under test: one `websofttt serve` node with its own data dir and config in the temp dir.

(Named relay_node, not relay: run.py's directory is first on sys.path, and a module called `relay`
there would shadow the project's own `relay` package.)

Set up only through the CLI, as an operator would: `init`, a tenant bound to 127.0.0.0/8 (so smtp-source,
which cannot AUTH, submits as a trusted network), accepted terms, a password chosen by a person for path e
(`credential add`, stored as scrypt) and, for path g, a generated credential (`credential add --generate`,
whose secret is the first line the command prints). Submission listens for STARTTLS and, on a second port,
implicit TLS (the EHLO timing uses both). Everything else is the embedded default: DKIM signing of every copy,
the durable spool (fsync before 250), JSON logs (to a file here). The tenant gets a rate far above the default
10000/1h because one benchmark sends more than that; the limit itself is still checked (and counted in the
store) for every message. The store is SQLite in the data dir unless a PostgreSQL URL is given (`[store] url`,
paths d-pg and d-pg1ms); `init` creates its schema and the provider's DKIM key in it, as it would for the
first node of a cluster.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from measure import Daemon, free_ports, wait_port

TENANT, USERNAME, PASSWORD = "bench", "app1", "bench password for app1, loopback only"
GENERATED_USERNAME = "app2"          # path g: a generated credential (`credential add --generate`)
RATE = "1000000000/1h"
DKIM_RECORD = "s1._domainkey.websofttt.com"


class NoGeneratedCredential(RuntimeError):
    """`websofttt credential add --generate` is not there (or did not print a secret): path g cannot run."""


def websofttt_bin() -> str:
    """The console script of the venv that runs this harness."""
    return str(Path(sys.executable).parent / "websofttt")


class RelayNode:
    def __init__(self, root: Path, sink_port: int, workers: int, name: str = "relay", generated: bool = False,
                 store_url: str = "", extra_config: str = "", api_rate: str = "600/60s"):
        """generated: also add GENERATED_USERNAME with `credential add --generate` (path g); when that fails,
        `generated_error` says why and `generated_file` stays None. store_url: a postgresql:// URL for the
        store (an empty database), or empty for SQLite in the data dir. extra_config: TOML sections appended;
        api_rate: requests per tenant API key (the API bench sends far more than the default)."""
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.data = self.dir / "var"
        self.port, self.tls_port, inbound, self.http_port = free_ports(4)
        http = self.http_port
        self.config = self.dir / "websofttt.toml"
        self.config.write_text(f"""\
[node]
name = "bench"
workers = {workers}

[paths]
data_dir = "{self.data}"

[store]
url = "{store_url}"

[submission]
listen = ["127.0.0.1:{self.port}"]
tls_listen = ["127.0.0.1:{self.tls_port}"]
shutdown_grace = "5s"

[inbound]
listen = ["127.0.0.1:{inbound}"]

[http]
listen = ["127.0.0.1:{http}"]
public_url = "http://127.0.0.1:{http}"
api_rate = "{api_rate}"

[delivery]
routes = {{ "example.net" = "127.0.0.1:{sink_port}" }}
""" + extra_config)
        self._cli("init")
        self._cli("tenant", "add", TENANT, "--allow-from", "example.com", "--network", "127.0.0.0/8", "--rate", RATE)
        self._cli("tenant", "accept-terms", TENANT)
        self._cli("credential", "add", TENANT, USERNAME, stdin=PASSWORD + "\n")
        self.password_file = self.dir / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self.generated_file: Path | None = None
        self.generated_error = "not asked for"
        if generated:
            try:
                self.generated_file = self._add_generated()
            except NoGeneratedCredential as e:
                self.generated_error = str(e)
        self.log = self.dir / "serve.log"
        self.daemon = Daemon("websofttt serve", [websofttt_bin(), "serve", "--config", str(self.config)], self.log)
        wait_port(self.port, 60, self.daemon.proc)
        self._wait_serving(60)

    def _add_generated(self) -> Path:
        """`websofttt credential add TENANT app2 --generate`: the secret is the first line of its stdout."""
        usage = self._cli("credential", "add", "--help")
        if "--generate" not in usage:
            raise NoGeneratedCredential("`websofttt credential add` has no --generate option in this working tree "
                                        "(generated credentials have not landed): path g needs it")
        try:
            out = self._cli("credential", "add", TENANT, GENERATED_USERNAME, "--generate", stdin="")
        except RuntimeError as e:
            raise NoGeneratedCredential(str(e)) from None
        secret = out.splitlines()[0].strip() if out.strip() else ""
        if not secret or " " in secret:
            raise NoGeneratedCredential(f"`credential add --generate` printed no secret on its first line: {out[:200]!r}")
        path = self.dir / "generated-secret"
        path.write_text(secret + "\n")
        path.chmod(0o600)
        return path

    def _cli(self, *args: str, stdin: str | None = None) -> str:
        run = subprocess.run([websofttt_bin(), *args, "--config", str(self.config)], input=stdin,
                             capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            raise RuntimeError(f"websofttt {' '.join(args)} exited {run.returncode}: {run.stderr.strip()[-2000:]}")
        return run.stdout

    def _wait_serving(self, timeout: float) -> None:
        """Every worker has bound its listeners once the supervisor logs 'serving ... with N workers'."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "serving" in self.log.read_text(errors="replace"):
                return
            if not self.daemon.alive():
                break
            time.sleep(0.1)
        raise RuntimeError(f"websofttt serve is not serving: {self.log_tail()}")

    def dns_txt(self) -> str:
        """The provider key's DKIM TXT record (s1._domainkey.websofttt.com), for the correctness check, as
        `websofttt dkim dns` gives it to publish (the key is a file with SQLite, in the store with PostgreSQL)."""
        for line in self._cli("dkim", "dns").splitlines():
            if line.startswith(f"{DKIM_RECORD}. IN TXT "):
                return "".join(line.split(" IN TXT ", 1)[1].strip().split('"')[1::2])
        raise RuntimeError(f"`websofttt dkim dns` printed no {DKIM_RECORD} record")

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def refusals(self, limit: int = 5) -> list[str]:
        """What the relay answered when it refused or deferred (from its JSON log), most recent last."""
        import json
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") in ("rejected", "deferred", "bounced") or entry.get("level") in ("error", "critical"):
                found.append(f"{entry.get('event') or entry.get('level')}: {entry.get('reply') or entry.get('message')}")
        return found[-limit:]

    def stop(self) -> None:
        """SIGTERM (drain), then SIGKILL of the process group if it takes longer than the grace."""
        self.daemon.stop(grace=15)
