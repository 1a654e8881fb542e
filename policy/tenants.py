"""Tenants: the provider's customers, their status, accepted terms, sending domains and networks."""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass
from enum import StrEnum

from policy import events, privacy
from policy.settings import Rate, parse_rate
from policy.store import Store, utcnow

_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class TenantError(Exception):
    """A request about tenants that cannot be carried out (unknown id, duplicate, bad value)."""


class Status(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"     # `tenant suspend`, or its complaint or bounce rate: its mail is held
    REMOVED = "removed"         # `tenant remove`: no credentials, no mail; `tenant restore` brings it back
    ERASED = "erased"           # `tenant remove --erase`: its data gone too; for good


@dataclass(frozen=True)
class Tenant:
    id: str
    status: str                     # a Status
    reason: str | None              # why it was suspended
    terms_version: str | None       # the terms version it accepted last (None: none yet)
    allowed_from: tuple[str, ...]   # domains it may use in From (besides provider domains)
    networks: tuple[str, ...]       # CIDRs from which it may submit without AUTH
    rate: str | None                # its own message rate ("N/PERIOD"), else the policy default
    created: str
    name: str | None = None         # display name shown to recipients (unsubscribe page)
    resumed: str | None = None      # when it was last resumed: its rates count from then
    contact: str | None = None      # where the provider writes to the tenant (notices of changes)
    pool: str | None = None         # the egress pool its copies leave from (None: the default pool)

    @property
    def active(self) -> bool:
        return self.status == Status.ACTIVE

    @property
    def removed(self) -> bool:
        """Offboarded (`tenant remove`, with or without --erase): it sends nothing and is told nothing."""
        return self.status in (Status.REMOVED, Status.ERASED)

    def message_rate(self, default: Rate) -> Rate:
        return parse_rate(self.rate) if self.rate else default

    def as_json(self) -> dict:
        return asdict(self) | {"allowed_from": list(self.allowed_from), "networks": list(self.networks)}


def _from_row(row: dict) -> Tenant:
    return Tenant(id=row["id"], status=row["status"], reason=row["reason"], terms_version=row["terms_version"],
                  allowed_from=tuple(json.loads(row["allowed_from"])), networks=tuple(json.loads(row["networks"])),
                  rate=row["rate"], created=row["created"], name=row["name"], resumed=row["resumed"],
                  contact=row.get("contact"), pool=row.get("pool"))


def check_id(tenant_id: str) -> str:
    if not _TENANT_ID.match(tenant_id):
        raise TenantError(f"tenant id {tenant_id!r} must be lower-case letters, digits, '-' or '_' (at most 63)")
    return tenant_id


def normalise_network(cidr: str) -> str:
    try:
        return str(ipaddress.ip_network(cidr, strict=False))
    except ValueError:
        raise TenantError(f"network {cidr!r} is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32") from None


def normalise_domain(domain: str) -> str:
    d = domain.strip().lower().rstrip(".")
    if not re.match(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$", d):
        raise TenantError(f"domain {domain!r} is not a domain name such as example.com")
    return d


def check_rate(rate: str) -> str:
    try:
        parse_rate(rate)
    except ValueError as e:
        raise TenantError(f"rate {rate!r} must be {e}") from None
    return rate


def check_pool(pool: str, pools: set[str] | None) -> str:
    if pools is not None and pool not in pools:
        raise TenantError(f"--pool: no egress pool {pool!r} is configured (known: {', '.join(sorted(pools))})")
    return pool


def check_contact(address: str) -> str:
    """A mailbox such as ops@acme.example (where notices to the tenant go)."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or any(c.isspace() or c in "<>,;" for c in local):
        raise TenantError(f"contact {address!r} is not an email address such as ops@acme.example")
    return f"{local}@{normalise_domain(domain)}"


def add(store: Store, tenant_id: str, allowed_from: list[str], networks: list[str], rate: str | None,
        name: str | None = None, contact: str | None = None, pool: str | None = None,
        pools: set[str] | None = None) -> Tenant:
    """`pools`: the egress pools configured (`pool` must be one of them)."""
    check_id(tenant_id)
    row = {"id": tenant_id, "status": Status.ACTIVE.value, "reason": None, "terms_version": None,
           "allowed_from": json.dumps(sorted({normalise_domain(d) for d in allowed_from})),
           "networks": json.dumps(sorted({normalise_network(n) for n in networks})),
           "rate": check_rate(rate) if rate is not None else None, "created": utcnow(),
           "name": (name or "").strip()[:100] or None, "resumed": None,
           "contact": check_contact(contact) if contact else None,
           "pool": check_pool(pool, pools) if pool else None}
    with store.exclusive():
        if get(store, tenant_id):
            raise TenantError(f"tenant {tenant_id!r} already exists")
        store.insert("tenants", row)
    return _from_row(row)


def get(store: Store, tenant_id: str) -> Tenant | None:
    row = store.one("SELECT * FROM tenants WHERE id = ?", [tenant_id])
    return _from_row(row) if row else None


def require(store: Store, tenant_id: str) -> Tenant:
    tenant = get(store, tenant_id)
    if tenant is None:
        raise TenantError(f"no tenant {tenant_id!r}")
    return tenant


def all_tenants(store: Store) -> list[Tenant]:
    return [_from_row(r) for r in store.all("SELECT * FROM tenants ORDER BY id")]


def _update(store: Store, tenant_id: str, **values: object) -> Tenant:
    require(store, tenant_id)
    store.update("tenants", ("id", tenant_id), values)
    return require(store, tenant_id)


def _not_removed(store: Store, tenant_id: str) -> Tenant:
    t = require(store, tenant_id)
    if t.removed:
        raise TenantError(f"tenant {tenant_id} was removed ({t.reason})"
                          + ("" if t.status == Status.ERASED else f": websofttt tenant restore {tenant_id}"))
    return t


def suspend(store: Store, tenant_id: str, reason: str) -> Tenant:
    if not reason.strip():
        raise TenantError("a suspension needs a reason")
    _not_removed(store, tenant_id)
    return _update(store, tenant_id, status=Status.SUSPENDED, reason=reason.strip())


def resume(store: Store, tenant_id: str) -> Tenant:
    _not_removed(store, tenant_id)
    return _update(store, tenant_id, status=Status.ACTIVE, reason=None, resumed=utcnow())


def remove(store: Store, tenant_id: str, reason: str, erase: bool) -> dict[str, int]:
    """Offboard a tenant: its credentials and API keys go (AUTH answers 535) and it may not submit; with `erase`, its
    DKIM keys, its own suppressions (global ones stay) and the addresses in its records go as well, its
    complaints and cases kept as counts (policy/privacy.py). Returns rows changed per table. The caller
    drops its queued mail (per node) and checks legal holds first."""
    if not reason.strip():
        raise TenantError("a removal needs a reason (--reason)")
    with store.exclusive():
        t = require(store, tenant_id)
        if t.status == Status.ERASED:
            return {}
        counts = {"credentials": store.execute("DELETE FROM credentials WHERE tenant = ?", [tenant_id]).rowcount,
                  "api_keys": store.execute("DELETE FROM api_keys WHERE tenant = ?", [tenant_id]).rowcount,
                  "webhooks": store.execute("DELETE FROM webhooks WHERE tenant = ?", [tenant_id]).rowcount}
        values: dict[str, object] = {"status": Status.ERASED if erase else Status.REMOVED, "reason": reason.strip()}
        if erase:
            counts |= privacy.erase_tenant(store, tenant_id)
            values |= {"allowed_from": "[]", "networks": "[]", "rate": None, "name": None, "contact": None}
        store.update("tenants", ("id", tenant_id), values)
        events.record(store, "tenant_removed", tenant_id, ("erased: " if erase else "") + reason.strip())
    return counts


def restore(store: Store, tenant_id: str) -> Tenant:
    """Bring back a tenant removed without --erase, active; it needs new credentials."""
    with store.exclusive():
        t = require(store, tenant_id)
        if t.status != Status.REMOVED:
            raise TenantError(f"tenant {tenant_id} is {t.status}: only a tenant removed without --erase can be restored")
        events.record(store, "tenant_restored", tenant_id, "")
        return _update(store, tenant_id, status=Status.ACTIVE, reason=None, resumed=utcnow())


@dataclass(frozen=True)
class Change:
    """What `tenant set` changes; empty fields change nothing."""
    add_from: tuple[str, ...] = ()
    remove_from: tuple[str, ...] = ()
    add_network: tuple[str, ...] = ()
    remove_network: tuple[str, ...] = ()
    rate: str | None = None
    name: str | None = None
    contact: str | None = None
    pool: str | None = None
    pools: set[str] | None = None     # the egress pools configured


def change(store: Store, tenant_id: str, c: Change) -> tuple[Tenant, list[str]]:
    """Apply `c` to the tenant, all or nothing; (the tenant after, what changed, for the event row).
    Running workers see it within submission.trust_cache_ttl (README, Operations)."""
    with store.exclusive():
        t = require(store, tenant_id)
        froms = _edited(t.allowed_from, [normalise_domain(d) for d in c.add_from],
                        [normalise_domain(d) for d in c.remove_from], "From domain", tenant_id)
        nets = _edited(t.networks, [normalise_network(n) for n in c.add_network],
                       [normalise_network(n) for n in c.remove_network], "network", tenant_id)
        if t.allowed_from and not froms and t.active:
            raise TenantError(f"tenant {tenant_id} is active: its last From domain cannot be removed "
                              f"(suspend it first, or add another with --add-from)")
        values: dict[str, object] = {}
        said = []
        if froms != list(t.allowed_from):
            values["allowed_from"] = json.dumps(froms)
            said.append(f"from {','.join(froms) or '-'}")
        if nets != list(t.networks):
            values["networks"] = json.dumps(nets)
            said.append(f"networks {','.join(nets) or '-'}")
        for field, value in (("rate", c.rate and check_rate(c.rate)), ("name", c.name and c.name.strip()[:100]),
                             ("contact", c.contact and check_contact(c.contact)),
                             ("pool", c.pool and check_pool(c.pool, c.pools))):
            if value and value != getattr(t, field):
                values[field] = value
                said.append(f"{field} {value}")
        if values:
            store.update("tenants", ("id", tenant_id), values)
            events.record(store, "tenant_changed", tenant_id, "; ".join(said))
        return require(store, tenant_id), said


def _edited(current: tuple[str, ...], added: list[str], removed: list[str], what: str, tenant_id: str) -> list[str]:
    missing = [r for r in removed if r not in current]
    if missing:
        raise TenantError(f"{what} {missing[0]} is not one of tenant {tenant_id}'s ({', '.join(current) or 'none'})")
    return sorted((set(current) | set(added)) - set(removed))


def trusted_networks(store: Store) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
    """(network, tenant id) for every tenant bound to networks, most specific first."""
    nets = [(ipaddress.ip_network(n), t.id) for t in all_tenants(store) if not t.removed for n in t.networks]
    return sorted(nets, key=lambda item: item[0].prefixlen, reverse=True)
