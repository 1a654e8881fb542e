"""Egress sources and pools: the local address (and EHLO name) that a tenant's copies leave from, so that
one tenant's list does not sink the reputation of the addresses the others send from.

    [egress.sources.mta2]
    address = "192.0.2.12"            # IPv4 or IPv6 configured on this host; outbound connections bind to it
    ehlo = "mta2.relay.example"       # its EHLO name, which should resolve back to the address
    warmup = [1000, 2500, 5000]       # optional: copies a day, day 0 from warmup_start, then no cap
    warmup_start = "2026-12-01"
    [egress.pools.bulk]
    sources = [{ name = "mta2", weight = 2 }, { name = "mta3" }]
    warmup_overflow = "wait"          # a source over its cap: its copies wait for tomorrow, or "move" to another

A tenant joins a pool with `tenant add|set --pool NAME`; tenants without one, and the provider's own mail,
use the `default` pool: the machine's default address and the provider's hostname, unless a pool of that
name is configured.
"""
from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

DEFAULT = "default"
OVERFLOWS = ("wait", "move")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", re.I)
_SOURCE_KEYS = {"address", "ehlo", "warmup", "warmup_start"}
_POOL_KEYS = {"sources", "warmup_overflow"}


@dataclass(frozen=True)
class Source:
    name: str
    address: str = ""                 # "" : the machine's default
    ehlo: str = ""                    # "" : the provider's hostname
    warmup: tuple[int, ...] = ()
    warmup_start: datetime.date | None = None

    def cap(self, today: datetime.date) -> int | None:
        """Copies this source may send on `today` while it warms up; None once it is warm (or never warms)."""
        if not self.warmup or self.warmup_start is None:
            return None
        day = (today - self.warmup_start).days
        return self.warmup[max(0, day)] if day < len(self.warmup) else None


@dataclass(frozen=True)
class Pool:
    name: str
    sources: tuple[tuple[str, int], ...]      # (source name, weight)
    overflow: str = "wait"


DEFAULT_SOURCE = Source(DEFAULT)
DEFAULT_POOL = Pool(DEFAULT, ((DEFAULT, 1),))


def parse_sources(value: Any) -> dict[str, Source]:
    if not isinstance(value, dict):
        raise ValueError("a table of [egress.sources.NAME] with address and ehlo")
    return {name: _source(name, spec) for name, spec in value.items()}


def parse_pools(value: Any) -> dict[str, Pool]:
    if not isinstance(value, dict):
        raise ValueError("a table of [egress.pools.NAME] with sources = [{ name, weight }]")
    return {name: _pool(name, spec) for name, spec in value.items()}


def check(sources: dict[str, Source], pools: dict[str, Pool]) -> None:
    """Every pool's sources are configured (ValueError naming the pool and the source)."""
    for pool in pools.values():
        for name, _ in pool.sources:
            if name not in sources and not (name == DEFAULT and pool.name == DEFAULT):
                raise ValueError(f"[egress.pools.{pool.name}] sources: no [egress.sources.{name}]")


def pool_names(pools: dict[str, Pool]) -> set[str]:
    return set(pools) | {DEFAULT}


def _section(kind: str, name: str, spec: Any, keys: set[str]) -> str:
    """`[egress.KIND.NAME]` when it is a well-named table of known keys, else ValueError naming it."""
    where = f"[egress.{kind}.{name}]"
    if not _NAME.match(name) or not isinstance(spec, dict):
        raise ValueError(f"{where}: a table named with lower-case letters, digits, '-' and '_'")
    unknown = set(spec) - keys
    if unknown:
        raise ValueError(f"{where} unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(keys))})")
    return where


def _source(name: str, spec: Any) -> Source:
    where = _section("sources", name, spec, _SOURCE_KEYS)
    try:
        address = str(ipaddress.ip_address(spec.get("address", "")))
    except ValueError:
        raise ValueError(f"{where} address: an IPv4 or IPv6 address of this host, got {spec.get('address')!r}") from None
    ehlo = spec.get("ehlo", "")
    if not isinstance(ehlo, str) or not _HOSTNAME.match(ehlo):
        raise ValueError(f"{where} ehlo: a host name that resolves back to the address, got {ehlo!r}")
    warmup = spec.get("warmup", [])
    try:
        caps = tuple(int(v) for v in warmup)
        if not isinstance(warmup, list) or any(c < 0 for c in caps):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{where} warmup: a list of daily copy counts such as [1000, 2500], got {warmup!r}") from None
    start = spec.get("warmup_start")
    if caps and not isinstance(start, (datetime.date, str)):
        raise ValueError(f"{where} warmup_start: the first day of the warm-up, YYYY-MM-DD, is required with warmup")
    try:
        day = datetime.date.fromisoformat(str(start)) if start is not None else None
    except ValueError:
        raise ValueError(f"{where} warmup_start: a date YYYY-MM-DD, got {start!r}") from None
    return Source(name, address, ehlo.lower(), caps, day)


def _pool(name: str, spec: Any) -> Pool:
    where = _section("pools", name, spec, _POOL_KEYS)
    members = spec.get("sources")
    if not isinstance(members, list) or not members:
        raise ValueError(f"{where} sources: a list such as [{{ name = \"mta2\", weight = 1 }}]")
    sources = []
    for m in members:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or set(m) - {"name", "weight"}:
            raise ValueError(f"{where} sources: each one {{ name = \"...\", weight = N }}, got {m!r}")
        weight = m.get("weight", 1)
        if not isinstance(weight, int) or weight < 1:
            raise ValueError(f"{where} sources: weight of {m['name']} must be a whole number >= 1, got {weight!r}")
        sources.append((m["name"], weight))
    overflow = spec.get("warmup_overflow", "wait")
    if overflow not in OVERFLOWS:
        raise ValueError(f"{where} warmup_overflow: one of {', '.join(OVERFLOWS)}, got {overflow!r}")
    return Pool(name, tuple(sources), overflow)
