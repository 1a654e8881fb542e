"""Legal holds: records the provider must keep because the law obliges it to (a summons, a court order).

The privacy policy promises to keep the minimum and to erase on request, and also that the provider "may
be obligated by law to adhere to legal summons". A hold reconciles the two: while it stands, the retention
purge (policy/retention.py) keeps the records it covers and `privacy erase` refuses, instead of destroying
what a court asked for. A hold covers one recipient address (the sent copies, events and bounce records
about it) or one tenant (the same records of its mail, and its hourly counts). It stands until released
or, with `until`, to the end of that day (UTC). Placing and releasing are audited, as showing records is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import date

from policy import audit, tenants
from policy.addresses import mask, normalise
from policy.store import Store, utcnow


class HoldError(Exception):
    """A hold request that cannot be carried out (no subject, a bad or past --until, an unknown hold)."""


@dataclass(frozen=True)
class Hold:
    id: int
    address: str | None         # the recipient address held, normalised (None: a tenant hold)
    tenant: str | None          # the tenant held (None: an address hold)
    reason: str                 # the summons or request the hold answers
    created: str
    until: str | None           # the last day it stands, YYYY-MM-DD (None: until released)
    released: str | None
    release_reason: str | None

    @property
    def subject(self) -> str:
        return _subject(self.address, self.tenant)

    def stands(self, today: str | None = None) -> bool:
        return self.released is None and (self.until is None or (today or _today()) <= self.until)

    def as_json(self) -> dict:
        return asdict(self) | {"stands": self.stands()}


def _today() -> str:
    """Days are UTC days, as every time in the store is UTC."""
    return utcnow()[:10]


def _day(until: str, today: str) -> str:
    """`until` checked: a YYYY-MM-DD day, not before today (a hold that never stands protects nothing)."""
    try:
        valid = date.fromisoformat(until).isoformat() == until
    except ValueError:
        valid = False
    if not valid:
        raise HoldError(f"--until {until!r} is not a day such as 2031-12-31")
    if until < today:
        raise HoldError(f"--until {until} is in the past (today is {today}, UTC)")
    return until


def _subject(address: str | None, tenant: str | None) -> str:
    """What a hold is on, as the audit log shows it: an address only masked."""
    return mask(address) if address else f"tenant={tenant}"


def _from_row(row: dict) -> Hold:
    return Hold(**{**row, "id": int(row["id"])})


def place(store: Store, reason: str, address: str | None = None, tenant: str | None = None,
          until: str | None = None, today: str | None = None) -> Hold:
    """Hold the records of `address` or of `tenant` (exactly one), audited with `reason`."""
    if (address is None) == (tenant is None):
        raise HoldError("a hold is on one address or one tenant: give exactly one")
    row = {"address": normalise(address) if address is not None else None,
           "tenant": tenants.require(store, tenant).id if tenant is not None else None,
           "reason": reason.strip(), "created": utcnow(),
           "until": _day(until, today or _today()) if until is not None else None}
    with store.exclusive():
        audit.record(store, "privacy hold", _subject(row["address"], row["tenant"]), reason)
        [inserted] = store.all(f"INSERT INTO holds ({', '.join(row)}) VALUES ({', '.join('?' * len(row))}) "
                               "RETURNING *", list(row.values()))
    return _from_row(inserted)


def release(store: Store, hold_id: int, reason: str) -> Hold:
    """End a hold before its `until` (or one without): the next purge removes what it kept. Audited."""
    with store.exclusive():
        row = store.one("SELECT * FROM holds WHERE id = ?", [hold_id])
        if row is None:
            raise HoldError(f"HOLD_ID {hold_id}: no such hold (see `websofttt privacy hold list`)")
        hold = _from_row(row)
        if hold.released:
            raise HoldError(f"HOLD_ID {hold_id}: already released on {hold.released}")
        audit.record(store, "privacy release", hold.subject, reason)
        ended = replace(hold, released=utcnow(), release_reason=reason.strip())
        store.update("holds", ("id", hold_id), {"released": ended.released, "release_reason": ended.release_reason})
    return ended


def listed(found: list[Hold]) -> str:
    """The holds as a refusal names them: "hold 1 (summons 12); hold 3 (court order 7)"."""
    return "; ".join(f"hold {h.id} ({h.reason})" for h in found)


def all_holds(store: Store) -> list[Hold]:
    """Every hold ever placed, released ones included: a few rows, kept as the record of what was held."""
    return [_from_row(r) for r in store.all("SELECT * FROM holds ORDER BY id")]


def standing(store: Store, today: str | None = None) -> list[Hold]:
    """The holds that stand `today` (default: the current UTC day)."""
    return [h for h in all_holds(store) if h.stands(today)]


def covering(store: Store, address: str | None = None, tenant: str | None = None) -> list[Hold]:
    """The standing holds on `address`, and those on `tenant` (whose records about any address they keep)."""
    a = normalise(address) if address else None
    return [h for h in standing(store) if (a and h.address == a) or (tenant and h.tenant == tenant)]
