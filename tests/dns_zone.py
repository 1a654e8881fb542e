"""A real DNS for the transport security tests: Knot serving test zones on loopback, one of them signed with
`ldns-signzone` (a record altered after signing for the bogus case), and Unbound validating them with that
zone's key as its trust anchor. Unbound is the resolver the relay is pointed at (`[dns] nameservers`).

Skips, saying which, when a Debian package is missing (.ci/run installs knot, unbound and ldnsutils).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import pytest

from tests.conftest import free_port

PROGRAMS = {"knotd": "knot", "unbound": "unbound", "ldns-signzone": "ldnsutils", "ldns-keygen": "ldnsutils"}


@dataclass
class Zone:
    name: str                      # "dane.test"
    records: list[str]             # zone file lines after SOA and NS, names relative to the zone
    signed: bool = False
    bogus: list[str] = field(default_factory=list)    # owners whose TLSA data is changed after signing


def require_programs() -> None:
    missing = sorted({package for program, package in PROGRAMS.items() if shutil.which(program) is None})
    if missing:
        pytest.skip(f"Debian packages missing for a real DNSSEC zone: {', '.join(missing)}")


class RealDns:
    """Knot (authoritative) and Unbound (validating resolver) on loopback ports, until `stop`."""

    def __init__(self, root: Path, zones: list[Zone]):
        require_programs()
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.authoritative_port, self.port = free_port(), free_port()
        self._processes: list[subprocess.Popen] = []
        anchors = [self._zone_file(zone) for zone in zones]
        self._start(["knotd", "-c", str(self._knot_conf(zones))], "knot.log")
        self._start(["unbound", "-d", "-c", str(self._unbound_conf(zones, [a for a in anchors if a]))], "unbound.log")
        self._wait(zones[0].name)

    def _zone_file(self, zone: Zone) -> Path | None:
        """Writes the zone (signed when asked); returns the file of its key-signing key, the trust anchor."""
        text = "\n".join([f"$ORIGIN {zone.name}.", "$TTL 60",
                          f"@ IN SOA ns.{zone.name}. hostmaster.{zone.name}. 1 3600 600 86400 60",
                          f"@ IN NS ns.{zone.name}.", "ns IN A 127.0.0.1", *zone.records, ""])
        path = self.root / f"{zone.name}.zone"
        path.write_text(text)
        if not zone.signed:
            return None
        keys = [self._run("ldns-keygen", "-a", "ECDSAP256SHA256", *flags, zone.name) for flags in (["-k"], [])]
        self._run("ldns-signzone", "-o", zone.name, str(path), *keys[::-1])
        signed = self.root / f"{zone.name}.zone.signed"
        if zone.bogus:
            signed.write_text(_altered(signed.read_text(), zone.bogus, zone.name))
        signed.rename(path)
        return self.root / f"{keys[0]}.key"

    def _run(self, *command: str) -> str:
        return subprocess.run(command, cwd=self.root, check=True, capture_output=True, text=True).stdout.strip()

    def _knot_conf(self, zones: list[Zone]) -> Path:
        conf = self.root / "knot.conf"
        conf.write_text("\n".join([
            "server:", f"    listen: 127.0.0.1@{self.authoritative_port}", f"    rundir: {self.root}",
            "database:", f"    storage: {self.root}/knot-db",
            "log:", "  - target: stderr", "    any: info",
            "template:", "  - id: default", f"    storage: {self.root}", "    zonefile-sync: -1",
            "    zonefile-load: whole", "    journal-content: none", "    semantic-checks: off",
            "zone:", *[f"  - domain: {z.name}\n    file: {z.name}.zone" for z in zones], ""]))
        return conf

    def _unbound_conf(self, zones: list[Zone], anchors: list[Path]) -> Path:
        conf = self.root / "unbound.conf"
        conf.write_text("\n".join([
            "server:", f"    interface: 127.0.0.1@{self.port}", f"    port: {self.port}", "    do-daemonize: no",
            '    username: ""', '    chroot: ""', f'    directory: "{self.root}"', f'    pidfile: "{self.root}/unbound.pid"',
            "    use-syslog: no", '    logfile: ""', "    verbosity: 1", "    val-log-level: 2",
            "    do-not-query-localhost: no", "    access-control: 127.0.0.0/8 allow",
            '    module-config: "validator iterator"', "    qname-minimisation: no", "    cache-max-ttl: 1",
            "    cache-max-negative-ttl: 1", '    local-zone: "test." nodefault',
            *[f'    trust-anchor-file: "{a}"' for a in anchors],
            *[f'stub-zone:\n    name: "{z.name}"\n    stub-addr: 127.0.0.1@{self.authoritative_port}' for z in zones],
            ""]))
        return conf

    def _start(self, command: list[str], log: str) -> None:
        with open(self.root / log, "wb") as out:
            self._processes.append(subprocess.Popen(command, cwd=self.root, stdout=out, stderr=subprocess.STDOUT))

    def _wait(self, name: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                dns.query.udp(dns.message.make_query(f"{name}.", "SOA"), "127.0.0.1", timeout=0.5, port=self.port)
                return
            except Exception:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self._processes):
                    self.stop()
                    raise RuntimeError(f"DNS servers did not start:\n{self.logs()}") from None
                time.sleep(0.1)

    def query(self, name: str, rdtype: str) -> dns.message.Message:
        """Unbound's answer, with the DO bit: what the relay would get."""
        query = dns.message.make_query(name, rdtype, want_dnssec=True)
        query.flags |= dns.flags.AD
        return dns.query.udp(query, "127.0.0.1", timeout=5, port=self.port)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.root.glob("*.log"))

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def _altered(text: str, owners: list[str], origin: str) -> str:
    """The signed zone with the TLSA data of `owners` changed and their signatures kept: a bogus answer."""
    def flip(match: re.Match) -> str:
        data = match.group(2)
        return match.group(1) + ("0" if data[0] != "0" else "1") + data[1:]
    for owner in owners:
        fqdn = re.escape(f"{owner}.{origin}.")
        text = re.sub(rf"^({fqdn}\s+\d+\s+IN\s+TLSA\s+\d+\s+\d+\s+\d+\s+)([0-9a-fA-F]+)", flip, text, flags=re.M)
    return text
