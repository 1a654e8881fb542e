"""The flood of the flood probe: clients that try wrong passwords over STARTTLS as fast as they can.

    python flood.py --port P --first 127.0.0.2 --clients 50 --duration S --users unknown|victim
                    [--victim app1]

One client per source address (--first, --first + 1, ...; Linux routes all of 127.0.0.0/8 to lo), each a
loop that never waits: connect, EHLO, STARTTLS, EHLO, AUTH PLAIN with a wrong password, QUIT. The
username is a new unknown one at every attempt (`--users unknown`: what a password sprayer does, so that
no username is tried often enough to be locked) or the victim's (`--users victim`: a brute force on one
account). Run as its own process; prints one JSON object: each address's replies to AUTH in order, and
when it got its first 454. `summarize` (used by the bench, over one flood or several in a row) judges
per address whether the lockout held: after its threshold-th 535 (or after its first 454) an address
must get 454 4.7.0 and nothing else, and never 235.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import resource
import ssl
import sys
import time

from loadgen import run

WRONG = "wrong password, flood probe"
TIMEOUT = 60.0


class Protocol(Exception):
    """The server answered something a client cannot go on from (a 4xx/5xx to EHLO or STARTTLS, a close)."""


async def reply(reader: asyncio.StreamReader) -> tuple[str, str]:
    """One complete (possibly multiline) reply: its code and its last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise Protocol("connection closed")
        text = line.decode("ascii", "replace").rstrip("\r\n")
        if len(text) < 4 or text[3] != "-":
            return text[:3], text


async def attempt(port: int, source: str, user: str, tls: ssl.SSLContext) -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        for command, want in ((None, "220"), (b"EHLO flood.example\r\n", "250"), (b"STARTTLS\r\n", "220")):
            if command:
                writer.write(command)
            code, text = await reply(reader)
            if code != want:
                return code, text
        await writer.start_tls(tls)
        writer.write(b"EHLO flood.example\r\n")
        code, text = await reply(reader)
        if code != "250":
            return code, text
        token = base64.b64encode(f"\0{user}\0{WRONG}".encode()).decode()
        writer.write(f"AUTH PLAIN {token}\r\n".encode())
        code, text = await reply(reader)
        writer.write(b"QUIT\r\n")
        try:
            await asyncio.wait_for(reply(reader), 5)
        except (TimeoutError, Protocol, OSError, ssl.SSLError):
            pass
        return code, text
    finally:
        writer.close()


async def client(args: argparse.Namespace, source: str, deadline: float, tls: ssl.SSLContext, out: dict) -> None:
    seq: list[str] = []
    texts: dict[str, str] = {}
    first_454 = None
    n = 0
    while time.monotonic() < deadline:
        user = args.victim if args.users == "victim" else f"nobody-{source}-{n}"
        n += 1
        try:
            code, text = await asyncio.wait_for(attempt(args.port, source, user, tls),
                                                max(0.1, min(TIMEOUT, deadline + 5 - time.monotonic())))
        except (TimeoutError, Protocol, OSError, ssl.SSLError) as e:
            if time.monotonic() >= deadline:
                break                   # cut off by the end of the flood: not an answer of the server
            code, text = type(e).__name__, str(e)
        seq.append(code)
        texts.setdefault(code, text)
        if code == "454" and first_454 is None:
            first_454 = time.monotonic()
        if code[:1] != "2" and code[:1] != "4" and code[:1] != "5":
            await asyncio.sleep(0.05)          # a local error (ports, timeouts): do not spin on it
    out[source] = (seq, texts, first_454)


def judge(seq: list[str], threshold: int) -> str | None:
    """None if the lockout held for this address, else what broke it."""
    if "235" in seq:
        return "235: a wrong password was accepted"
    failures = 0
    locked = False
    for i, code in enumerate(seq):
        if code == "454":
            locked = True
        elif code == "535":
            if locked:
                return f"535 after a 454 (attempt {i + 1})"
            failures += 1
            if failures > threshold:
                return f"{failures} replies 535, threshold {threshold}"
    if len([c for c in seq if c in ("535", "454")]) > threshold and not locked:
        return "never locked out"
    return None


async def flood(args: argparse.Namespace) -> dict:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    first = ipaddress.ip_address(args.first)
    sources = [str(first + i) for i in range(args.clients)]
    out: dict[str, tuple[list[str], dict[str, str], float | None]] = {}
    started = time.monotonic()
    deadline = started + args.duration
    await asyncio.gather(*(client(args, s, deadline, tls, out) for s in sources))
    texts: dict[str, str] = {}
    for source in sources:
        for code, text in out[source][1].items():
            texts.setdefault(code, text)
    return {"started": started, "users": args.users, "reply_text": texts,
            "sequences": {s: out[s][0] for s in sources}, "first_454": {s: out[s][2] for s in sources}}


def summarize(floods: list[dict], threshold: int) -> dict:
    """What one or more consecutive floods from the same addresses did, judged per address over all of
    them (a lockout lasts longer than the probe, so an address's replies are one sequence)."""
    sources = list(floods[0]["sequences"])
    seqs = {s: [code for f in floods for code in f["sequences"][s]] for s in sources}
    first_454 = {s: next((f["first_454"][s] for f in floods if f["first_454"][s] is not None), None) for s in sources}
    started = floods[0]["started"]
    by_code: dict[str, int] = {}
    texts: dict[str, str] = {}
    for f in floods:
        for code, text in f["reply_text"].items():
            texts.setdefault(code, text)
    broken = {}
    for source in sources:
        for code in seqs[source]:
            by_code[code] = by_code.get(code, 0) + 1
        why = judge(seqs[source], threshold)
        if why:
            broken[source] = why
    locked = list(first_454.values())
    return {"started": started, "all_locked_after": None if None in locked else round(max(locked) - started, 2),
            "clients": len(sources), "addresses": f"{sources[0]} ... {sources[-1]}", "users": floods[0]["users"],
            "attempts": sum(by_code.values()), "by_code": by_code, "reply_text": texts,
            "lockout_held": len(sources) - len(broken), "lockout_broken": broken,
            "locked_out": sum(1 for s in sources if first_454[s] is not None),
            "reached_threshold": sum(1 for s in sources if seqs[s].count("535") >= threshold),
            "max_535_per_address": max((seqs[s].count("535") for s in sources), default=0),
            "seconds": round(sum(f["seconds"] for f in floods), 2),
            "cpu_seconds": round(sum(f["cpu_seconds"] for f in floods), 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--first", default="127.0.0.2", help="the first source address (loopback only)")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--users", choices=("unknown", "victim"), default="unknown")
    p.add_argument("--victim", default="app1")
    args = p.parse_args()
    first = ipaddress.ip_address(args.first)
    if not (first.is_loopback and (first + args.clients - 1).is_loopback):
        raise SystemExit("flood.py sends to and from loopback addresses only")
    result = run(flood(args))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result |= {"seconds": round(time.monotonic() - result["started"], 2),
               "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2)}
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
