"""The reference: private Postfix instances (one plain, one with OpenDKIM as a milter, one with STARTTLS,
AUTH through Dovecot and OpenDKIM for path f) in the temp dir.

Each instance has its own main.cf/master.cf in its own config directory, started with
`postfix -c DIR start-fg` so that its master stays our child (stopped by pid). The system's
/etc/postfix is never read for settings nor written (`postfix -c` only reads postfix-files from
meta_directory to create the private queue directories), and the system instance is never started.

Settings are Postfix defaults except what a relay to one smarthost needs and what keeps it
comparable with the relay: no local delivery, relayhost = the sink, concurrency to the sink equal to
the relay's (workers x per_destination), logging to a file through postlogd (the relay logs too).
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from measure import Daemon, free_port, wait_port

PACKAGES = ("postfix", "opendkim", "opendkim-tools", "dovecot-core", "knot", "unbound", "ldnsutils")
TOOLS = ("postfix", "smtp-source", "smtp-sink", "opendkim", "opendkim-genkey", "dovecot", "doveadm",
         "knotd", "unbound", "ldns-signzone")      # the last three: the DNSSEC zone of paths d-mx and d-secure
SBIN = ("/usr/sbin", "/usr/lib/postfix/sbin", "/sbin")
MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n   -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path=os.pathsep.join(SBIN))


def ensure_packages(log) -> None:
    """Install Postfix, OpenDKIM, Dovecot, Knot, Unbound and ldns from Debian when a tool is missing, starting no
    system service.

    Postfix is preseeded with "No configuration" (no /etc/postfix/main.cf is written and nothing is
    started); a policy-rc.d that denies every start is put in place for the install when the
    machine has none, so that the other packages do not start the system's opendkim, dovecot, knot or
    unbound either (path f runs a private `dovecot -c FILE`, see dovecot.py; d-mx and d-secure their own
    Knot and Unbound, tests/dns_zone.py).
    """
    os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    missing = [t for t in TOOLS if _which(t) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {', '.join(missing)}; as root run: apt-get update && "
                         f"apt-get install {' '.join(PACKAGES)} (or run this benchmark as root)")
    log(f"installing {' '.join(PACKAGES)} from Debian (missing: {', '.join(missing)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type select No configuration\n",
                   check=True)
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\n# written by tests/bench for the duration of one apt-get install\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    finally:
        if ours:
            policy.unlink()
    still = [t for t in TOOLS if _which(t) is None]
    if still:
        raise SystemExit(f"still missing after apt-get install: {', '.join(still)}")


def throwaway_cert(directory: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate, the kind the relay's `init` makes for itself (policy/keys.py),
    so that both sides of a comparison pay for the same TLS handshake."""
    cert, key = directory / "tls-cert.pem", directory / "tls-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", f"/CN={hostname}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def _chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


class Postfix:
    """One private Postfix instance: smtpd on a free loopback port, relaying everything to the sink."""

    def __init__(self, root: Path, name: str, sink_port: int, destination_concurrency: int,
                 milter_socket: Path | None = None, sasl_socket: Path | None = None,
                 settings: dict[str, str] | None = None, queue: Path | None = None):
        """sasl_socket: Dovecot's auth socket; the instance then offers STARTTLS (a throwaway certificate),
        AUTH only after it, and relays only for authenticated clients (path f). settings: main.cf values
        added or replaced; queue: the queue directory (default: in the instance's directory)."""
        self.name = name
        self.dir = root / name
        self.conf, self.data = self.dir / "conf", self.dir / "data"
        self.queue = queue or self.dir / "queue"
        for d in (self.conf, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        self.queue.chmod(0o755)
        _chown(self.data, "postfix")
        self.port = free_port()
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.bench.invalid",
            "mydomain": "bench.invalid",
            "myorigin": "$myhostname",
            "mydestination": "",                      # no local delivery at all
            "local_recipient_maps": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "relayhost": f"[127.0.0.1]:{sink_port}",
            # The relay opens at most workers x per_destination connections to one host: the same here.
            "default_destination_concurrency_limit": str(destination_concurrency),
            "smtp_destination_concurrency_limit": str(destination_concurrency),
            "maillog_file": str(self.dir / "postfix.log"),
            "maillog_file_prefixes": str(root),
            "biff": "no",
            "smtputf8_enable": "no",
        }
        if milter_socket is not None:
            main |= {"smtpd_milters": f"unix:{milter_socket}", "non_smtpd_milters": f"unix:{milter_socket}",
                     "milter_default_action": "tempfail", "milter_protocol": "6"}
        if sasl_socket is not None:
            cert, key = throwaway_cert(self.dir, main["myhostname"])
            main |= {"smtpd_tls_security_level": "may", "smtpd_tls_auth_only": "yes",
                     "smtpd_tls_cert_file": str(cert), "smtpd_tls_key_file": str(key),
                     "smtpd_sasl_auth_enable": "yes", "smtpd_sasl_type": "dovecot",
                     "smtpd_sasl_path": str(sasl_socket), "smtpd_sasl_security_options": "noanonymous",
                     # the trusted network must not stand in for AUTH: only authenticated clients relay
                     "smtpd_relay_restrictions": "permit_sasl_authenticated, reject"}
        main |= settings or {}
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=self.port))
        self.daemon = Daemon(f"postfix {name}", ["postfix", "-c", str(self.conf), "start-fg"],
                             self.dir / "start-fg.log")
        try:
            wait_port(self.port, 60, self.daemon.proc)
        except RuntimeError as e:
            raise RuntimeError(f"Postfix {name} did not start: {e}\n{self.diagnose()}") from None

    def diagnose(self) -> str:
        """Postfix prints its fatal errors only to a terminal or to its log: run `check` under `script`."""
        out = subprocess.run(["script", "-qc", f"postfix -c {self.conf} check", "/dev/null"],
                             capture_output=True, text=True, timeout=60)
        log = self.dir / "postfix.log"
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
        return "\n".join([out.stdout.strip(), *tail])

    def problems(self, limit: int = 3) -> str:
        """The last warnings, errors and rejections of its log (what a failed run's client was refused for)."""
        log = self.dir / "postfix.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        found: dict[str, int] = {}
        for severity in ("panic:", "fatal:", "error:", "reject:", "warning:"):     # the cause before its echoes
            for line in lines:
                if severity in line:
                    text = line[line.index(severity):]
                    found[text] = found.get(text, 0) + 1
        return " | ".join(f"{n} x {text}" for text, n in list(found.items())[:limit])

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """SIGTERM to the master (it stops its children), then SIGKILL to whatever is left of the tree."""
        master = self.master_pid()
        self.daemon.stop(term_pid=master if master in self.daemon.pids() else None)


class OpenDKIM:
    """OpenDKIM in signing mode on a UNIX socket, RSA-2048, relaxed/relaxed, signing every message from example.com."""

    def __init__(self, root: Path, domain: str = "example.com", selector: str = "bench"):
        self.dir = root / "opendkim"
        self.dir.mkdir(parents=True)
        self.domain, self.selector = domain, selector
        subprocess.run(["opendkim-genkey", "-b", "2048", "-d", domain, "-s", selector, "-D", str(self.dir)],
                       check=True)
        key = self.dir / f"{selector}.private"
        user = "opendkim" if _has_user("opendkim") else "postfix"
        _chown(self.dir, user)                    # it may create its socket and pid file after dropping root
        _chown(key, user)
        key.chmod(0o600)
        self.socket = self.dir / "opendkim.sock"
        conf = self.dir / "opendkim.conf"
        conf.write_text("\n".join([
            "Mode s",
            f"Domain {domain}",
            f"Selector {selector}",
            f"KeyFile {key}",
            f"Socket local:{self.socket}",
            "UMask 000",                  # Postfix's smtpd (user postfix) must connect; the dir is private to the run
            f"UserID {user}",
            "Canonicalization relaxed/relaxed",
            "SignatureAlgorithm rsa-sha256",
            "OversignHeaders From",
            "InternalHosts 127.0.0.0/8",
            "Background no",
            "Syslog no",
            "RequireSafeKeys no",
            f"PidFile {self.dir / 'opendkim.pid'}",
            "",
        ]))
        self.daemon = Daemon("opendkim", ["opendkim", "-f", "-x", str(conf)], self.dir / "opendkim.log")
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if not self.daemon.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"opendkim did not start: {self.daemon.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)

    def dns_txt(self) -> str:
        """The TXT record opendkim-genkey wrote (for verifying the signatures in the correctness check)."""
        raw = (self.dir / f"{self.selector}.txt").read_text()
        return "".join(raw.split('"')[1::2])          # the quoted pieces of the zone-file record

    def stop(self) -> None:
        self.daemon.stop()


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
