"""Path f's password checks: a private Dovecot auth service for Postfix's SASL, and what one check costs.

`Dovecot` runs `dovecot -F -c FILE` with every directory of its own in the temp dir (base_dir for its
sockets, state_dir, log), no mail protocol at all, and one `auth` service whose unix listener
Postfix's `smtpd_sasl_type = dovecot` connects to. The system's /etc/dovecot is never read and the
system's instance never started (see postfix.ensure_packages for the install).

The users live in a passwd-file, the password stored as ARGON2ID (Dovecot verifies it with libsodium's
crypto_pwhash_str_verify). The relay stores a person's password as scrypt N=2^15, r=8, p=1 (32 MiB);
`calibrate` times both on this machine and picks Argon2id's parameters so that one check costs about the
same CPU: the same 32 MiB of memory (m=32768 KiB), p=1 (libsodium's only), and the number of passes t
that brings the CPU per check closest to scrypt's. Hashes are made with the same libsodium (through
ctypes) that Dovecot checks them with, because `doveadm pw -r` ties the memory to the passes.

Dovecot's auth cache is on (auth_cache_size, auth_cache_ttl), but in Dovecot 2.3 it never applies to
a passwd-file passdb: that driver declares no cache key (src/auth/passdb-passwd-file.c sets no
default_cache_key, and auth.c leaves the passdb's cache_key NULL), and a passdb without one is neither
looked up in nor saved to the cache. Nor is passwd-file a blocking passdb, so no auth-worker process is
used either: every login verifies the Argon2id hash in the single `auth` process, one at a time (about
one core at most). A cacheable passdb would not save the hash anyway: a cache hit verifies the password
against the cached hash (src/auth/passdb-cache.c). When that process is busy for longer than Postfix's
10 s handshake timeout (50 logins queued on a busy 2-core machine), smtpd exits with
"fatal: no SASL authentication mechanisms" and its client sees the connection drop.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import statistics
import subprocess
import time
from pathlib import Path

from measure import Daemon

ARGON2ID_MEMORY_KIB = 32 * 1024      # = scrypt's 128 * r * N bytes at N=2^15, r=8
SCRYPT_PARAMS = "N=2^15, r=8, p=1"   # policy/credentials.py; the check is timed through its own functions
_STRBYTES = 128                      # crypto_pwhash_STRBYTES
_sodium = None


def _libsodium() -> ctypes.CDLL:
    """libsodium (a dependency of Debian's dovecot-core): the code Dovecot verifies ARGON2ID with."""
    global _sodium
    if _sodium is None:
        name = ctypes.util.find_library("sodium") or "libsodium.so.23"
        lib = ctypes.CDLL(name)
        if lib.sodium_init() < 0:
            raise RuntimeError("sodium_init failed")
        lib.crypto_pwhash_argon2id_str.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong,
                                                   ctypes.c_ulonglong, ctypes.c_size_t]
        lib.crypto_pwhash_str_verify.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong]
        _sodium = lib
    return _sodium


def argon2id_hash(password: str, passes: int, memory_kib: int = ARGON2ID_MEMORY_KIB) -> str:
    """`$argon2id$v=19$m=...,t=...,p=1$salt$hash`, as libsodium's crypto_pwhash_argon2id_str makes it."""
    out = ctypes.create_string_buffer(_STRBYTES)
    pw = password.encode()
    if _libsodium().crypto_pwhash_argon2id_str(out, pw, len(pw), passes, memory_kib * 1024) != 0:
        raise RuntimeError(f"crypto_pwhash_argon2id_str failed (t={passes}, m={memory_kib} KiB)")
    return out.value.decode()


def argon2id_verify(stored: str, password: str) -> bool:
    pw = password.encode()
    return _libsodium().crypto_pwhash_str_verify(stored.encode(), pw, len(pw)) == 0


def _cpu_ms(check, count: int) -> float:
    """Median CPU time of this thread per call, after one call that is not counted (page faults of the first)."""
    check()
    times = []
    for _ in range(count):
        started = time.thread_time()
        check()
        times.append((time.thread_time() - started) * 1000)
    return statistics.median(times)


def calibrate(password: str, checks: int = 3) -> dict:
    """Time the relay's scrypt check and Argon2id checks; choose t so that both cost about the same CPU."""
    from policy import credentials
    stored = credentials.hash_password(password)
    scrypt_ms = _cpu_ms(lambda: credentials.verify_password(stored, password.encode()), checks)
    one = argon2id_hash(password, 1)
    several_t = 6
    several = argon2id_hash(password, several_t)
    one_ms = _cpu_ms(lambda: argon2id_verify(one, password), checks)
    several_ms = _cpu_ms(lambda: argon2id_verify(several, password), checks)
    per_pass = max((several_ms - one_ms) / (several_t - 1), 0.1)
    passes = max(1, round(1 + (scrypt_ms - one_ms) / per_pass))
    chosen = argon2id_hash(password, passes)
    if not argon2id_verify(chosen, password) or argon2id_verify(chosen, password + "x"):
        raise RuntimeError("libsodium's Argon2id check does not behave")
    argon_ms = _cpu_ms(lambda: argon2id_verify(chosen, password), checks)
    return {"scrypt": {"params": SCRYPT_PARAMS, "memory_mib": 32, "cpu_ms": round(scrypt_ms, 1)},
            "argon2id": {"params": f"m={ARGON2ID_MEMORY_KIB} KiB, t={passes}, p=1", "memory_mib": 32,
                         "t": passes, "cpu_ms": round(argon_ms, 1)},
            "checks_timed": checks, "hash": chosen}


class Dovecot:
    """A private Dovecot with only its auth service: a passwd-file of ARGON2ID hashes, the auth cache on."""

    def __init__(self, root: Path, users: dict[str, str], client_user: str = "postfix"):
        """users: username -> libsodium Argon2id string; client_user owns the auth socket (Postfix's smtpd)."""
        found = self.version()
        if not found.startswith("2.3."):
            raise RuntimeError(f"dovecot.py writes a Dovecot 2.3 configuration (Debian 12); this machine has "
                               f"Dovecot {found or '(no version)'}, whose configuration language differs")
        self.dir = root / "dovecot"
        self.dir.mkdir(parents=True)
        base, state = self.dir / "run", self.dir / "state"
        state.mkdir()
        self.socket = base / "auth-client"
        self.log = self.dir / "dovecot.log"
        passwd = self.dir / "users"
        passwd.write_text("".join(f"{user}:{{ARGON2ID}}{stored}::::::\n" for user, stored in users.items()))
        internal = pwd.getpwnam("dovecot")
        passwd.chmod(0o640)               # read by the auth process, which runs as the internal user
        os.chown(passwd, 0, internal.pw_gid)
        self.conf = self.dir / "dovecot.conf"
        self.conf.write_text(f"""\
# A private instance for tests/bench (path f): SASL for one private Postfix, nothing else.
base_dir = {base}
state_dir = {state}
log_path = {self.log}
info_log_path = {self.log}
protocols =
listen = 127.0.0.1
ssl = no
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
auth_mechanisms = plain login
auth_cache_size = 10M
auth_cache_ttl = 1 hour
auth_cache_negative_ttl = 1 hour
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home=/nonexistent
}}
service auth {{
  unix_listener auth-client {{
    mode = 0660
    user = {client_user}
    group = {client_user}
  }}
}}
""")
        self.daemon = Daemon("dovecot", ["dovecot", "-F", "-c", str(self.conf)], self.dir / "dovecot.stderr")
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if not self.daemon.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"dovecot did not start: {self.diagnose()}")
            time.sleep(0.05)

    def diagnose(self, lines: int = 10) -> str:
        text = []
        for f in (self.dir / "dovecot.stderr", self.log):
            if f.exists():
                text += f.read_text(errors="replace").splitlines()[-lines:]
        return " | ".join(text)

    @staticmethod
    def version() -> str:
        try:
            return subprocess.run(["dovecot", "--version"], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except OSError:
            return ""

    def stop(self) -> None:
        self.daemon.stop()
