"""Suppression list: recipients a tenant (or every tenant) must not mail again, and why."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

from policy.addresses import normalise
from policy.store import Store, utcnow

GLOBAL = "global"


class Cause(StrEnum):
    """Why an address is suppressed; the values are stored and shown."""
    UNSUBSCRIBE = "unsubscribe"
    COMPLAINT = "complaint"
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"     # until it expires
    MANUAL = "manual"               # by the operator


CAUSES = tuple(c.value for c in Cause)      # plain strings: click.Choice takes Enum members by name

# What the RCPT reply says about each cause: precise for the tenant, nothing about the recipient's mail.
REASONS: dict[str, str] = {
    Cause.UNSUBSCRIBE: "has unsubscribed from this sender",
    Cause.COMPLAINT: "complained about mail from this sender",
    Cause.HARD_BOUNCE: "previously bounced",
    Cause.SOFT_BOUNCE: "recently bounced",
    Cause.MANUAL: "is suppressed by the operator",
}


class SuppressionError(Exception):
    """A suppression request that cannot be carried out."""


@dataclass(frozen=True)
class Suppression:
    address: str
    scope: str          # "global" or a tenant id
    cause: str
    source: str | None
    created: str
    expires: str | None

    @property
    def reason(self) -> str:
        return REASONS[self.cause]

    def as_json(self) -> dict:
        return asdict(self)


def add(store: Store, address: str, scope: str = GLOBAL, cause: str = Cause.MANUAL, source: str | None = None,
        expires: str | None = None) -> bool:
    """Suppress `address` in `scope`; True if it was new. An existing entry keeps its first cause."""
    if cause not in CAUSES:
        raise SuppressionError(f"cause {cause!r} must be one of: {', '.join(CAUSES)}")
    addr = normalise(address)
    if "@" not in addr:
        raise SuppressionError(f"{address!r} is not an email address")
    cur = store.execute(
        "INSERT INTO suppressions (address, scope, cause, source, created, expires) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(address, scope) DO NOTHING", [addr, scope, cause, source, utcnow(), expires])
    return cur.rowcount == 1


def remove(store: Store, address: str, scope: str = GLOBAL) -> bool:
    return store.execute("DELETE FROM suppressions WHERE address = ? AND scope = ?",
                         [normalise(address), scope]).rowcount == 1


def find(store: Store, tenant: str, address: str) -> Suppression | None:
    """The entry that stops `tenant` from mailing `address`: a global one first, else its own scope's."""
    row = store.one(
        "SELECT * FROM suppressions WHERE address = ? AND scope IN (?, ?) AND (expires IS NULL OR expires > ?) "
        "ORDER BY scope = ? DESC LIMIT 1", [normalise(address), tenant, GLOBAL, utcnow(), GLOBAL])
    return Suppression(**row) if row else None


def entries(store: Store, scope: str | None = None) -> list[Suppression]:
    if scope is None:
        rows = store.all("SELECT * FROM suppressions ORDER BY scope, address")
    else:
        rows = store.all("SELECT * FROM suppressions WHERE scope = ? ORDER BY address", [scope])
    return [Suppression(**r) for r in rows]


def get(store: Store, scope: str, address: str) -> Suppression | None:
    """The entry of `address` in `scope` only (the API shows a tenant its own list, never the global one)."""
    row = store.one("SELECT * FROM suppressions WHERE address = ? AND scope = ?", [normalise(address), scope])
    return Suppression(**row) if row else None


def page(store: Store, scope: str, after: str, limit: int) -> list[Suppression]:
    """Up to `limit` entries of `scope` whose address sorts after `after`, in address order (a stable cursor)."""
    rows = store.all("SELECT * FROM suppressions WHERE scope = ? AND address > ? ORDER BY address LIMIT ?",
                     [scope, after, limit])
    return [Suppression(**r) for r in rows]
