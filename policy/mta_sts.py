"""MTA-STS (RFC 8461): reading a domain's TXT record and policy, matching MX hosts, and the policies every
node shares through the store.

A policy is kept for its `max_age` (RFC 8461 §5.1) and used while it is fresh: when the TXT record's `id` is
unchanged, when the policy host cannot be reached, and when the TXT record is gone. relay/mta_sts.py does the
lookups and fetches; this module decides what they mean.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from policy.store import Store

ENFORCE, TESTING, NONE = "enforce", "testing", "none"
MAX_AGE_LIMIT = 31557600              # RFC 8461 §3.2: at most one year
MAX_POLICY_BYTES = 65536              # RFC 8461 §3.3: a policy larger than 64 KB is refused
_RECORD_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_MX_PATTERN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z0-9-]*[a-z]$")


class PolicyError(ValueError):
    """A malformed record or policy: the domain has none (RFC 8461 §3.3); the message says why."""


@dataclass(frozen=True)
class Policy:
    mode: str                     # ENFORCE | TESTING | NONE
    mx: tuple[str, ...]           # host names and "*.domain" patterns, lower case
    max_age: int                  # seconds
    policy_id: str = ""           # the TXT record's id it was fetched under
    fetched: float = 0.0          # epoch seconds

    def fresh(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.fetched + self.max_age

    def lines(self) -> tuple[str, ...]:
        """The policy as fetched, one line per field (TLS-RPT's policy-string)."""
        return ("version: STSv1", f"mode: {self.mode}", *(f"mx: {m}" for m in self.mx), f"max_age: {self.max_age}")

    def matches(self, host: str) -> bool:
        """RFC 8461 §4.1: an exact name, or "*.example.com" for exactly one more label on the left."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def record_id(texts: list[str]) -> str:
    """The `id` of the one TXT record that starts with "v=STSv1" (RFC 8461 §3.1); PolicyError when there is
    none, more than one, or it is malformed."""
    records = [t for t in texts if re.match(r"^v=STSv1\s*(;|$)", t)]
    if len(records) != 1:
        raise PolicyError(f"{len(records)} TXT records start with v=STSv1; exactly one is needed")
    fields = dict(_field(part) for part in records[0].split(";") if part.strip())
    if not _RECORD_ID.match(fields.get("id", "")):
        raise PolicyError("the TXT record has no valid id (1 to 32 letters and digits)")
    return fields["id"]


def _field(part: str) -> tuple[str, str]:
    name, sep, value = part.strip().partition("=")
    if not sep:
        raise PolicyError(f"malformed TXT record field {part.strip()!r}")
    return name.strip(), value.strip()


def parse_policy(text: str, policy_id: str = "", fetched: float = 0.0) -> Policy:
    """RFC 8461 §3.2: "key: value" lines (CRLF or LF); unknown keys are ignored, `mx` may repeat."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"malformed policy line {line[:80]!r}")
        values.setdefault(name.strip(), []).append(value.strip())
    if values.get("version") != ["STSv1"]:
        raise PolicyError("the policy's version is not STSv1")
    mode = (values.get("mode") or [""])[0]
    if mode not in (ENFORCE, TESTING, NONE):
        raise PolicyError(f"the policy's mode {mode!r} is not enforce, testing or none")
    age = (values.get("max_age") or [""])[0]
    if not age.isdigit() or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"the policy's max_age {age!r} is not a number of seconds up to {MAX_AGE_LIMIT}")
    mx = tuple(m.lower().rstrip(".") for m in values.get("mx", []))
    bad = [m for m in mx if not _MX_PATTERN.match(m)]
    if bad:
        raise PolicyError(f"the policy's mx {bad[0]!r} is not a host name or *.domain pattern")
    if mode != NONE and not mx:
        raise PolicyError(f"a {mode} policy names no mx")
    return Policy(mode, mx, int(age), policy_id, fetched)


def cached(store: Store, domain: str) -> Policy | None:
    """The policy last fetched for `domain`, fresh or not (the caller decides)."""
    row = store.one("SELECT policy_id, mode, mx, max_age, fetched FROM mta_sts_policies WHERE domain = ?", [domain])
    if row is None:
        return None
    return Policy(row["mode"], tuple(json.loads(row["mx"])), row["max_age"], row["policy_id"], row["fetched"])


def save(store: Store, domain: str, policy: Policy) -> None:
    store.execute("INSERT INTO mta_sts_policies (domain, policy_id, mode, mx, max_age, fetched) VALUES (?, ?, ?, ?, ?, ?) "
                  "ON CONFLICT(domain) DO UPDATE SET policy_id = excluded.policy_id, mode = excluded.mode, "
                  "mx = excluded.mx, max_age = excluded.max_age, fetched = excluded.fetched",
                  [domain, policy.policy_id, policy.mode, json.dumps(policy.mx), policy.max_age, policy.fetched])
