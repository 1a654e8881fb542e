"""Before measuring: does each path deliver what it should? A few messages into a dumping smtp-sink.

A throughput figure is worthless if a path silently skips work, so each path's output is read
once: the plain paths must arrive unsigned and unchanged, paths c and f with OpenDKIM's signature
(d=example.com), paths d, e, g, d-pg and d-pg1ms with the relay's (d=websofttt.com); every signature
is verified with dkimpy against the public keys of this run (no DNS: the records are handed to dkimpy).
"""
from __future__ import annotations

import email.parser
from pathlib import Path

import dkim

EXPECTED_SIGNER = {"a": None, "b": None, "c": "example.com", "d": "websofttt.com", "e": "websofttt.com",
                   "f": "example.com", "g": "websofttt.com", "d-pg": "websofttt.com", "d-pg1ms": "websofttt.com",
                   "d-shaped": "websofttt.com"}


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
