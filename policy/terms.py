"""Terms of service: versions published with notice, in force from their date, accepted by each tenant.

The privacy statement promises notification of a change "at least thirty (30) business days prior to the
change taking effect". So a new version is published in the store (shared by every node) with its effective
date, at least `provider.terms_notice_business_days` business days away (policy/business_days.py); the
version in force stays in force until that date, and from 00:00 UTC on it, a tenant that has not accepted
the new version is refused at MAIL, on every node, with no restart. `provider.terms_version` names only the
first version. Accepting a version also satisfies every earlier one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime

from policy import events
from policy.business_days import Calendar
from policy.store import Store, utcnow


def utc_today() -> date:
    """The date that decides which version is in force (the effective date begins at 00:00 UTC)."""
    return datetime.now(UTC).date()


class TermsError(Exception):
    """A terms request that cannot be carried out (too early a date, unknown version, …): exit 2."""


@dataclass(frozen=True)
class Version:
    version: str
    published: str
    effective: str          # YYYY-MM-DD: in force from 00:00 UTC that day
    summary: str
    url: str | None

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Book:
    """Every published version, oldest first, and the configured first one (used while the store has none)."""
    versions: tuple[Version, ...]
    configured: str

    def in_force(self, today: date) -> str:
        current = [v.version for v in self.versions if v.effective <= today.isoformat()]
        return current[-1] if current else self.configured

    def rank(self, version: str | None) -> int:
        names = [v.version for v in self.versions] or [self.configured]
        return names.index(version) if version in names else -1

    def satisfied(self, accepted: str | None, today: date) -> bool:
        """Whether a tenant that accepted `accepted` (its newest) may send on `today`."""
        return accepted is not None and self.rank(accepted) >= self.rank(self.in_force(today))

    def newest(self) -> str:
        return self.versions[-1].version if self.versions else self.configured

    def get(self, version: str) -> Version:
        for v in self.versions:
            if v.version == version:
                return v
        known = ", ".join(v.version for v in self.versions) or "none"
        raise TermsError(f"no terms version {version!r} was published (published: {known})")


def book(store: Store, configured: str) -> Book:
    rows = store.all("SELECT * FROM terms ORDER BY effective, published")
    return Book(tuple(Version(**r) for r in rows), configured)


def seed(store: Store, configured: str) -> Book:
    """Store the configured version as the first, in force at once, when the store has none (with the tenants
    that accepted it); refuse a configured version that was never published (it would cut everyone off)."""
    with store.exclusive():
        current = book(store, configured)
        if not current.versions:
            now = utcnow()
            store.insert("terms", {"version": configured, "published": now, "effective": now[:10],
                                   "summary": "The first terms of service.", "url": None})
            for row in store.all("SELECT id FROM tenants WHERE terms_version = ?", [configured]):
                store.insert("terms_accepted", {"tenant": row["id"], "version": configured, "accepted": now})
            return book(store, configured)
    if configured not in {v.version for v in current.versions}:
        raise TermsError(f"[provider] terms_version {configured!r} was never published; a new version is published "
                         f"with notice: websofttt terms publish {configured} --effective YYYY-MM-DD --summary-file FILE "
                         f"(in force now: {current.in_force(utc_today())})")
    return current


def publish(store: Store, calendar: Calendar, notice_days: int, version: str, effective: date, summary: str,
            url: str | None, today: date) -> Version:
    """Record a new version taking effect on `effective`, at least `notice_days` business days after `today`."""
    earliest = calendar.earliest_effective(today, notice_days)
    if effective < earliest:
        raise TermsError(f"--effective {effective} is fewer than {notice_days} business days away; the earliest "
                         f"date allowed is {earliest}")
    if not version.strip() or len(version) > 40 or any(c.isspace() for c in version):
        raise TermsError(f"VERSION {version!r} must be a short name without spaces, such as 2027-03")
    if not summary.strip():
        raise TermsError("--summary-file is empty: the notice must say what changes")
    if url is not None and not url.startswith(("https://", "http://")):
        raise TermsError(f"--url {url!r} must be an http(s) address")
    new = Version(version, utcnow(), effective.isoformat(), summary.strip(), url)
    with store.exclusive():
        existing = store.all("SELECT version, effective FROM terms ORDER BY effective DESC")
        if any(r["version"] == version for r in existing):
            raise TermsError(f"terms version {version} is already published")
        if existing and existing[0]["effective"] >= new.effective:
            raise TermsError(f"--effective must be after {existing[0]['effective']}, when version "
                             f"{existing[0]['version']} takes effect")
        store.insert("terms", new.as_json())
    return new


def accept(store: Store, configured: str, tenant_id: str, version: str | None) -> str:
    """Record that the tenant accepted `version` (None: the newest published); returns the version."""
    current = seed(store, configured)
    chosen = current.get(version).version if version else current.newest()
    with store.exclusive():
        row = store.one("SELECT terms_version FROM tenants WHERE id = ?", [tenant_id])
        if row is None:
            raise TermsError(f"no tenant {tenant_id!r}")
        if not store.one("SELECT 1 AS x FROM terms_accepted WHERE tenant = ? AND version = ?", [tenant_id, chosen]):
            store.insert("terms_accepted", {"tenant": tenant_id, "version": chosen, "accepted": utcnow()})
        if current.rank(chosen) >= current.rank(row["terms_version"]):
            store.update("tenants", ("id", tenant_id), {"terms_version": chosen})
        events.record(store, "terms_accepted", tenant_id, f"version {chosen}")
    return chosen


def summary(store: Store, configured: str) -> list[dict]:
    """Every version with how many tenants accepted it and how many were sent its notice."""
    accepted = {r["version"]: r["n"] for r in
                store.all("SELECT version, COUNT(*) AS n FROM terms_accepted GROUP BY version")}
    notified = {r["version"]: r["n"] for r in
                store.all("SELECT version, COUNT(*) AS n FROM terms_notices WHERE kind = 'notice' GROUP BY version")}
    return [v.as_json() | {"accepted": accepted.get(v.version, 0), "notified": notified.get(v.version, 0)}
            for v in book(store, configured).versions]
