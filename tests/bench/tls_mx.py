"""The next hop of paths d-mx and d-secure: a recipient domain found through real DNS, with an MX host that
offers STARTTLS, and the two transport security policies the relay checks (README "Transport security").

  - DNS: tests/dns_zone.py's Knot serving one zone, DOMAIN, signed with ldns-signzone, and a validating
    Unbound (the zone's key its trust anchor) that the relay asks (`[dns] nameservers`): the MX record, the MX
    host's A record (127.0.0.1), its TLSA record `3 1 1` (DANE-EE, the SHA-256 of the MX certificate's SPKI) at
    _PORT._tcp.MX_HOST, and the MTA-STS TXT record with the policy host's A record.
  - A private CA (trustme): the MX host's certificate, the policy host's certificate, and the file the relay
    verifies both with (`[delivery] tls_ca_file`).
  - The MTA-STS policy server: https://mta-sts.DOMAIN:PORT/.well-known/mta-sts.txt, `mode: enforce` for the MX
    host, in a process of its own (this module run as a script, on aiohttp) so that its CPU is in neither the
    relay's nor the harness's. The relay fetches the policy once per worker and keeps it in memory; it looks
    at the TXT record again at most once a minute.
  - The MX: a private Postfix instance (postfix.py's, with settings of its own) whose smtpd on 127.0.0.1:PORT
    offers STARTTLS with the MX certificate and relays everything for DOMAIN to the sink, in clear, without DNS
    lookups, its queue on tmpfs (/dev/shm) so that its disk is not what is measured.

Both paths go through the same DNS, MX and sink; only the relay's `[delivery] mta_sts`, `dane` and `[dns]
dnssec` differ (`relay_config`), so that their ratio is what transport security costs the relay.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from measure import Daemon, free_port, wait_port
from postfix import SBIN, Postfix

DOMAIN = "bench.dane.test"
MX_HOST = f"mx.{DOMAIN}"
POLICY_HOST = f"mta-sts.{DOMAIN}"
RECIPIENT = f"rcpt@{DOMAIN}"
POLICY = f"version: STSv1\nmode: enforce\nmx: {MX_HOST}\nmax_age: 86400\n"
PROGRAMS = ("knotd", "unbound", "ldns-signzone", "ldns-keygen", "postfix")
PROCESS_LIMIT = 150       # the MX's smtpd processes (the relay opens up to workers x per_destination to it)


def missing_programs() -> list[str]:
    """What the DNS and the MX need and this machine lacks (Debian: knot, unbound, ldnsutils, postfix)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return [p for p in PROGRAMS if shutil.which(p, path=path) is None]


def spki_sha256(pem: bytes) -> str:
    """The TLSA `3 1 1` data of a certificate: SHA-256 of its SubjectPublicKeyInfo, hex."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


class MxPostfix(Postfix):
    """A Postfix instance as the MX host of DOMAIN: STARTTLS offered (not required), everything for DOMAIN relayed
    to the sink in clear; no DNS, no local delivery. Its queue lives in a directory of its own on tmpfs."""

    def __init__(self, root: Path, sink_port: int, destination_concurrency: int, cert_chain: Path, key: Path):
        shm = Path("/dev/shm")
        self._shm_queue = Path(tempfile.mkdtemp(prefix="websofttt-bench-mx-", dir=shm)) if shm.is_dir() else None
        super().__init__(root, "postfix-mx", sink_port, destination_concurrency, queue=self._shm_queue, settings={
            "myhostname": MX_HOST,
            "mydomain": DOMAIN,
            "relay_domains": DOMAIN,
            "relay_recipient_maps": "",
            "smtp_dns_support_level": "disabled",     # the sink is an address: nothing to look up
            "smtp_tls_security_level": "none",        # the hop to the sink is not what is measured
            "smtpd_tls_security_level": "may",
            "smtpd_tls_chain_files": f"{key}, {cert_chain}",
            "smtpd_tls_loglevel": "0",
            "default_process_limit": str(PROCESS_LIMIT),
            "relay_destination_concurrency_limit": str(destination_concurrency)})

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self._shm_queue is not None:
                shutil.rmtree(self._shm_queue, ignore_errors=True)


class TlsMx:
    """DNS (Knot + Unbound), the CA, the MTA-STS policy server and the Postfix MX, until `stop`."""

    def __init__(self, root: Path, sink_port: int, destination_concurrency: int):
        import trustme

        from tests.dns_zone import RealDns, Zone
        self.dir = root / "tls-mx"
        self.dir.mkdir(parents=True)
        self.dns = self.policy_server = self.mx = None
        try:
            ca = trustme.CA()
            self.ca_file = self.dir / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_file))
            mx_cert, mx_key = self._issue(ca, MX_HOST, "mx")
            policy_cert, policy_key = self._issue(ca, POLICY_HOST, "mta-sts")
            self.mx = MxPostfix(root, sink_port, destination_concurrency, mx_cert, mx_key)
            self.tlsa = f"3 1 1 {spki_sha256(mx_cert.read_bytes())}"
            self.policy_port = free_port()
            self.policy_server = Daemon("mta-sts policy server", [
                sys.executable, str(Path(__file__).resolve()), str(self.policy_port), str(policy_cert),
                str(policy_key)], self.dir / "policy-server.log")
            wait_port(self.policy_port, 30, self.policy_server.proc)
            records = ["@ IN MX 10 mx", "mx IN A 127.0.0.1", f"_{self.mx.port}._tcp.mx IN TLSA {self.tlsa}",
                       '_mta-sts IN TXT "v=STSv1; id=1"', "mta-sts IN A 127.0.0.1"]
            self.dns = RealDns(self.dir / "dns", [Zone(DOMAIN, records, signed=True)])
            self._check_dns()
        except BaseException:
            self.stop()
            raise

    def _issue(self, ca, name: str, stem: str) -> tuple[Path, Path]:
        issued = ca.issue_cert(name)
        cert, key = self.dir / f"{stem}-chain.pem", self.dir / f"{stem}-key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        return cert, key

    def _check_dns(self) -> None:
        """Unbound answers the MX and the TLSA records, validated (AD): else d-secure would silently not use DANE."""
        import dns.flags
        for name, rdtype in ((DOMAIN, "MX"), (f"_{self.mx.port}._tcp.{MX_HOST}", "TLSA")):
            answer = self.dns.query(f"{name}.", rdtype)
            if not answer.answer or not answer.flags & dns.flags.AD:
                raise RuntimeError(f"Unbound's answer for {name} {rdtype} is not a validated one: {answer}\n"
                                   f"{self.dns.logs()}")

    def relay_config(self, secure: bool) -> str:
        """RelayNode's extra_config (appended inside its [delivery] section, [dns] after it): the MX port, the CA
        and the policy server; with `secure`, MTA-STS and DANE on and the resolver trusted for DNSSEC, without
        it both off (opportunistic STARTTLS, what the relay does for a domain without policies)."""
        on = "true" if secure else "false"
        return (f"mx_port = {self.mx.port}\n"
                f'tls_ca_file = "{self.ca_file}"\n'
                f"mta_sts = {on}\n"
                f"dane = {on}\n"
                f"mta_sts_https_port = {self.policy_port}\n"
                "https_private_hosts = true\n"
                "\n[dns]\n"
                f'nameservers = ["127.0.0.1:{self.dns.port}"]\n'
                f"dnssec = {on}\n")

    def cpu_parts(self) -> dict[str, list[int]]:
        """The process trees of the next hop, by name: what the relay's CPU figures leave out."""
        return {"postfix-mx": [self.mx.daemon.pid], "dns": [p.pid for p in self.dns._processes],
                "mta-sts server": [self.policy_server.pid]}

    def describe(self) -> str:
        return (f"{DOMAIN}: MX {MX_HOST} = Postfix STARTTLS on 127.0.0.1:{self.mx.port} -> sink; TLSA {self.tlsa[:16]}...; "
                f"MTA-STS enforce from https://{POLICY_HOST}:{self.policy_port}; Unbound on 127.0.0.1:{self.dns.port} "
                f"(zone signed, validated)")

    def stop(self) -> None:
        for service in (self.mx, self.policy_server, self.dns):
            if service is not None:
                service.stop()
        self.mx = self.policy_server = self.dns = None


def serve_policy(port: int, cert: str, key: str) -> None:
    """The policy server: POLICY at /.well-known/mta-sts.txt for Host mta-sts.DOMAIN, 404 for any other host."""
    import ssl

    from aiohttp import web

    async def policy(request: web.Request) -> web.Response:
        if request.host.split(":")[0].lower() != POLICY_HOST:
            return web.Response(status=404, text="unknown host")
        return web.Response(text=POLICY)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/.well-known/mta-sts.txt", policy)
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=context, print=None, access_log=None)


if __name__ == "__main__":
    serve_policy(int(sys.argv[1]), sys.argv[2], sys.argv[3])
