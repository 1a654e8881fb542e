"""Micro-benchmarks of issue-level targets that need no SMTP: suppression at scale and inbound classification.

    .venv/bin/python tests/bench/micro.py [--entries 10000000] [--import-size 1000000]

- `suppression import` of N addresses (the CLI's code path, policy/suppression_import) into a fresh store;
- the RCPT-time check (policy/suppression.find) p50/p99 over 100,000 lookups, half hits, with the store
  grown to --entries rows;
- inbound classification (inbound/classify) of every sample in tests/data (the real corpus included) and
  tests/corpus, repeated,
  in messages per second on one core, and for the node: one process per CPU at once, as the node's
  workers classify;
- transport security on the delivery path (relay/transport.py, relay/dane.py): the decision per copy with the
  domain's MTA-STS policy and the MX host's TLSA records in the worker's caches, and the DANE match of a
  certificate chain, done once per new connection.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from inbound.classify import classify                      # noqa: E402
from policy import suppression                              # noqa: E402
from policy.store_sqlite import SqliteStore  # noqa: E402
from policy.suppression_import import import_lines          # noqa: E402


def lines(start: int, count: int):
    for i in range(start, start + count):
        yield f"user{i}@example{i % 5000}.com\n"


def bench_suppression(entries: int, import_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "store.sqlite")
        store.migrate()
        started = time.perf_counter()
        result = import_lines(store, lines(0, import_size), "global", "manual", "bench")
        imported = time.perf_counter() - started
        assert result.added == import_size
        done = import_size
        while done < entries:
            step = min(1_000_000, entries - done)
            import_lines(store, lines(done, step), "global", "manual", "bench")
            done += step
        rng = random.Random(7)
        timings = []
        for n in range(100_000):
            k = rng.randrange(entries)
            address = f"user{k}@example{k % 5000}.com" if n % 2 else f"nobody{n}@example.org"
            t = time.perf_counter()
            found = suppression.find(store, "acme", address)
            timings.append(time.perf_counter() - t)
            assert (found is not None) == bool(n % 2), address
        timings.sort()
        store.close()
    return {"import_addresses": import_size, "import_seconds": round(imported, 2), "entries": entries,
            "find_p50_ms": round(timings[len(timings) // 2] * 1000, 4),
            "find_p99_ms": round(timings[int(len(timings) * 0.99)] * 1000, 4)}


def classify_corpus(rounds: int) -> int:
    """Classify the mixed corpus `rounds` times; how many messages that was."""
    folders = {"tests/data/bounces": "bounce", "tests/data/real": "bounce", "tests/data/complaints": "abuse",
               "tests/corpus/inbound": "abuse"}
    samples = [(p.read_bytes(), [role]) for d, role in folders.items() for p in sorted((ROOT / d).rglob("*.eml"))]
    for _ in range(rounds):
        for raw, roles in samples:
            classify(raw, roles, [None])
    return len(samples) * rounds


def bench_classify(rounds: int = 20) -> dict:
    started = time.perf_counter()
    one = classify_corpus(rounds)
    single = one / (time.perf_counter() - started)
    processes = os.cpu_count() or 1
    with multiprocessing.Pool(processes) as pool:
        started = time.perf_counter()
        total = sum(pool.map(classify_corpus, [rounds] * processes))
        node = total / (time.perf_counter() - started)
    return {"classified": one, "messages_per_second": round(single),
            "processes": processes, "node_messages_per_second": round(node)}


def bench_transport(calls: int = 100_000) -> dict:
    """Microseconds per copy for the MTA-STS + DANE decision (warm caches, as for every copy but the first of a
    domain each TTL), and per connection for matching a chain against TLSA records."""
    import asyncio
    import dataclasses
    import hashlib

    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from policy import mta_sts
    from policy.settings import Dns, load_settings
    from relay import dane
    from relay.routing import Destination, Router
    from relay.transport import Transport

    settings = load_settings(None)
    settings = dataclasses.replace(settings, dns=Dns(nameservers=(("127.0.0.1", 53),), dnssec=True))
    router = Router(settings.delivery, dns_settings=settings.dns)

    async def call(function, *args):
        return function(*args)
    transport = Transport(settings, router, None, call)      # type: ignore[arg-type]  (no store: caches are warm)
    assert transport.mta_sts is not None and transport.tlsa is not None
    leaf = trustme.CA().issue_cert("mx.example.net")
    chain = [x509.load_pem_x509_certificate(b.bytes()).public_bytes(Encoding.DER) for b in leaf.cert_chain_pems]
    spki = x509.load_der_x509_certificate(chain[0]).public_key().public_bytes(Encoding.DER,
                                                                              PublicFormat.SubjectPublicKeyInfo)
    records = ((3, 1, 1, hashlib.sha256(spki).digest()),)
    now = time.time()
    transport.mta_sts._memo["example.net"] = (now + 3600, mta_sts.Policy("enforce", ("mx.example.net",), 86400, "1", now))
    transport.tlsa._cache[("mx.example.net", 25)] = (time.monotonic() + 3600, records)
    dest = Destination("mx.example.net", 25, address="192.0.2.1", mx=True, mx_secure=True)

    async def decide() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await transport.secure("example.net", [dest])
        return time.perf_counter() - started
    per_copy = asyncio.run(decide()) / calls
    started = time.perf_counter()
    for _ in range(1000):
        assert dane.matches(records, chain, "mx.example.net") == ""
    per_connection = (time.perf_counter() - started) / 1000
    return {"decision_us_per_copy": round(per_copy * 1e6, 1), "dane_match_us_per_connection": round(per_connection * 1e6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--import-size", type=int, default=1_000_000)
    args = parser.parse_args()
    print("transport security:", bench_transport())
    print("classification:", bench_classify())
    print("suppression:", bench_suppression(max(args.entries, args.import_size), args.import_size))


if __name__ == "__main__":
    main()
