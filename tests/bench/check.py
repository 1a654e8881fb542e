"""Before measuring: does each path deliver what it should? A few messages into a dumping smtp-sink.

A throughput figure is worthless if a path silently skips work, so each path's output is read
once: the plain paths must arrive unsigned and unchanged, paths c and f with OpenDKIM's signature
(d=example.com), paths d, e, g, d-pg, d-pg1ms, d-shaped, d-mx and d-secure with the relay's (d=websofttt.com);
every signature is verified with dkimpy against the public keys of this run (no DNS: the records are handed to
dkimpy). Paths d-mx and d-secure reach the sink through a Postfix MX (tls_mx.py): their relay node's JSON log
must also say that each copy went to it over TLS, verified by DANE for d-secure, whose node must have loaded
the domain's MTA-STS policy too (`check_tls`).
"""
from __future__ import annotations

import email.parser
import json
from pathlib import Path

import dkim

EXPECTED_SIGNER = {"a": None, "b": None, "c": "example.com", "d": "websofttt.com", "e": "websofttt.com",
                   "f": "example.com", "g": "websofttt.com", "d-pg": "websofttt.com", "d-pg1ms": "websofttt.com",
                   "d-shaped": "websofttt.com", "d-mx": "websofttt.com", "d-secure": "websofttt.com"}
EXPECTED_TLS = {"d-mx": "not verified", "d-secure": "verified by dane"}     # in the delivered events' [TLS: ...]
STS_LOADED = "MTA-STS policy of "       # the relay's log line when it fetched a domain's policy (relay/mta_sts.py)


def strip_sink_headers(raw: bytes) -> bytes:
    """smtp-sink's dump puts X-Client-*, X-*-Args and a 3-line Received before the message; drop them."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[0].startswith(b"X-Client-Addr:"):
        i = next(i for i, line in enumerate(lines) if line.startswith(b"Received:"))
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
        lines = lines[i:]
    return b"\r\n".join(lines)


def check_message(path: str, raw: bytes, records: dict[str, str]) -> str:
    """One dumped message against what its path promises; returns a one-line verdict ('ok: ...' or 'FAIL: ...')."""
    message = strip_sink_headers(raw)
    headers = email.parser.BytesHeaderParser().parsebytes(message)
    signatures = headers.get_all("DKIM-Signature") or []
    domains = [_tag(str(s), "d") for s in signatures]
    want = EXPECTED_SIGNER[path]
    if headers.get("Subject") is None or "example.com" not in str(headers.get("From")):
        return f"FAIL: headers changed (From={headers.get('From')!r}, Subject={headers.get('Subject')!r})"
    if want is None:
        return "ok: unsigned, as sent" if not signatures else f"FAIL: unexpected signature d={domains}"
    if want not in domains:
        return f"FAIL: no DKIM-Signature with d={want} (found {domains})"

    def dnsfunc(name, timeout=5):
        key = (name.decode() if isinstance(name, bytes) else name).rstrip(".").lower()
        return records.get(key, "").encode() or None

    ok = dkim.verify(message, dnsfunc=dnsfunc)
    algo = _tag(str(signatures[domains.index(want)]), "a")
    return f"ok: {algo} d={want} verified" if ok else f"FAIL: signature d={want} does not verify"


def check_tls(path: str, log_text: str, count: int) -> str:
    """The TLS of the copies a relay node delivered (its JSON log's `delivered` events, "reply ... [TLS: ...]"):
    at least `count`, each over TLS as EXPECTED_TLS says; for d-secure, the node also logged an MTA-STS
    policy in enforce mode (DANE takes precedence for the MX host, the policy is looked up all the same)."""
    delivered, sts = [], []
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        if entry.get("event") == "delivered":
            delivered.append(str(entry.get("reply", "")).rpartition("[TLS: ")[2].rstrip("]"))
        elif STS_LOADED in str(entry.get("message", "")):
            sts.append(str(entry["message"]))
    want = EXPECTED_TLS[path]
    wrong = [tls for tls in delivered if want not in tls or not tls.startswith("TLSv")]
    if len(delivered) < count:
        return f"FAIL: the relay logged {len(delivered)} delivered copies, expected {count}"
    if wrong:
        return f"FAIL: a copy went to the MX with TLS {wrong[0]!r}, expected {want!r}"
    if path == "d-secure" and not any("mode enforce" in m for m in sts):
        return f"FAIL: the relay logged no MTA-STS policy in enforce mode ({sts or 'none'})"
    return f"ok: TLS {delivered[-1]}" + (f"; {sts[-1]}" if path == "d-secure" else "")


def _tag(header: str, name: str) -> str:
    for part in "".join(header.split()).split(";"):
        key, _, value = part.partition("=")
        if key == name:
            return value
    return ""


def new_dumps(dump_dir: Path, seen: set[Path]) -> list[Path]:
    """Dump files not seen before (smtp-sink names them by time and a random suffix)."""
    found = [p for p in dump_dir.rglob("*") if p.is_file() and p not in seen]
    seen.update(found)
    return sorted(found)
