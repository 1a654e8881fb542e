"""Parsers for configuration values: each takes the raw TOML value and returns the typed one or raises
ValueError(what is expected), which the loader turns into a message naming the file and key. The keys
of policy/settings.py name theirs: `key(parse_count, 100)`."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

Listen = tuple[str, int]


@dataclass(frozen=True)
class Rate:
    """`count` messages per `period` seconds."""
    count: int
    period: float

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_UNIT_WORDS = {"sec": "s", "second": "s", "min": "m", "minute": "m", "hour": "h", "day": "d", "week": "w"}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def parse_duration(value: Any) -> float:
    """'30s', '5m', '2h', '5d', '1w' -> seconds."""
    m = _DURATION.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError("a duration such as \"30s\", \"5m\", \"2h\" or \"5d\"")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_rate(value: Any) -> Rate:
    """'10000/1h' or '100/60s' -> Rate; also accepts a bare period unit ('100/h', '500/min')."""
    expected = "a rate such as \"10000/1h\" (messages/period)"
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(expected)
    count, _, period = value.partition("/")
    period = _UNIT_WORDS.get(period.strip().lower(), period.strip())
    if period and period[0].isalpha():
        period = "1" + period
    try:
        rate = Rate(int(count.strip()), parse_duration(period))
    except ValueError:
        raise ValueError(expected) from None
    if rate.count < 1 or rate.period <= 0:
        raise ValueError(expected)
    return rate


def parse_listen(value: Any) -> Listen:
    """'127.0.0.1:8587', '[::1]:25', ':25' (all addresses) -> (host, port)."""
    expected = "\"host:port\" such as \"127.0.0.1:8587\" or \"[::1]:25\""
    if not isinstance(value, str):
        raise ValueError(expected)
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(expected)
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(expected)
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(expected + " (IPv6 addresses in brackets)")
    return (host or "0.0.0.0", int(port))


def parse_port(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ValueError("a port number from 1 to 65535")
    return value


def parse_nameservers(value: Any) -> tuple[Listen, ...]:
    """["127.0.0.1:5353", "[::1]:53", "9.9.9.9"] -> ((address, port), ...); addresses only, no names (the
    resolver needs them to look names up)."""
    expected = "a list of nameserver addresses such as \"127.0.0.1\", \"127.0.0.1:5353\" or \"[::1]:53\""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(expected)
    servers = []
    for text in value:
        bare = text.strip("[]") if text.startswith("[") and text.endswith("]") else text
        try:
            host, port = (bare, 53) if _ip(bare) else parse_listen(text)
        except ValueError:
            raise ValueError(expected) from None
        if not _ip(host):
            raise ValueError(expected)
        servers.append((host, port))
    return tuple(servers)


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_listen_list(value: Any) -> tuple[Listen, ...]:
    if not isinstance(value, list):
        raise ValueError("a list of \"host:port\" strings")
    return tuple(parse_listen(v) for v in value)


def parse_domain(value: Any) -> str:
    if not isinstance(value, str) or not _HOSTNAME.match(value.lower().rstrip(".")):
        raise ValueError("a domain name such as \"example.com\"")
    return value.lower().rstrip(".")


def parse_address(value: Any) -> str:
    if not isinstance(value, str) or value.count("@") != 1 or not value.split("@")[0]:
        raise ValueError("an address such as \"4abuse@example.com\"")
    local, domain = value.split("@")
    return f"{local}@{parse_domain(domain)}"


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def parse_country(value: Any) -> str:
    """Two letters; whether the holidays package knows the country is checked with the subdivision."""
    if not isinstance(value, str) or not re.match(r"^[A-Za-z]{2}$", value):
        raise ValueError("a two-letter country code such as US, GB, DE or FR")
    return value.upper()


def parse_dir(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty directory path")
    return value


def parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def parse_count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError("a positive integer")
    return value


def parse_fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError("a number between 0 and 1")
    return float(value)


def parse_node_name(value: Any) -> str:
    if not isinstance(value, str) or (value and not _NODE_NAME.match(value)):
        raise ValueError("empty (the host name) or letters, digits, '-' and '_' (at most 63)")
    return value


def parse_workers(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 256:
        raise ValueError("an integer from 0 (one per CPU core) to 256")
    return value


def parse_url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError("an http:// or https:// URL")
    return value.rstrip("/")


def parse_store_url(value: Any) -> str:
    if not isinstance(value, str) or (value and not value.startswith(("postgresql://", "postgres://"))):
        raise ValueError("empty (SQLite in data_dir) or a postgresql:// URL")
    return value


def parse_mode(value: Any) -> str:
    if value not in ("mx", "smarthost"):
        raise ValueError("\"mx\" or \"smarthost\"")
    return value


def parse_optional_listen(value: Any) -> Listen | None:
    return parse_listen(value) if value != "" else None


def parse_routes(value: Any) -> dict[str, Listen]:
    if not isinstance(value, dict):
        raise ValueError("a table of domain = \"host:port\"")
    return {parse_domain(k): parse_listen(v) for k, v in value.items()}


def parse_schedule(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("a non-empty list of durations such as [\"1m\", \"5m\"]")
    return tuple(parse_duration(v) for v in value)


def parse_selector(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^[a-z0-9]([a-z0-9-]{0,62})$", value, re.I):
        raise ValueError("a DKIM selector (letters, digits and '-')")
    return value


