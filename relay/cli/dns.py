"""`websofttt dns check DOMAIN`: what delivery would do for a recipient domain, through the same lookups and
decisions (relay/routing.py, relay/transport.py): its MX hosts, MTA-STS policy, TLSA records, TLS-RPT addresses,
and for each MX host whether it is used and what its TLS must prove."""
from __future__ import annotations

import asyncio
from typing import Any

import click

from policy.store import Store
from policy.settings import Settings
from relay import dane, tls_report
from relay.cli.common import emit, json_option, with_settings, with_store
from relay.routing import RouteError, Router
from relay.transport import Transport


@click.group("dns")
def dns_group() -> None:
    """DNS as the delivery role sees it ([dns] nameservers, dnssec).

    \b
    Example:
        websofttt dns check example.net
    """


@dns_group.command("check")
@click.argument("domain")
@json_option
@with_settings
@with_store
def dns_check(settings, store, domain, as_json) -> None:
    """What the relay would do for mail to DOMAIN: MX hosts, MTA-STS mode and patterns, TLSA records, where
    TLS-RPT reports go, and the verdict for each MX host. A policy fetched here is stored as delivery would.

    \b
    Example:
        websofttt dns check example.net --json
    """
    emit(asyncio.run(_check(settings, store, domain.lower().rstrip("."))), as_json, _lines)


async def _check(settings: Settings, store: Store, domain: str) -> dict[str, Any]:
    router = Router(settings.delivery, dns_settings=settings.dns)
    transport = Transport(settings, router, store, store.call)
    rpt, rpt_failed = await tls_report.rua_or_why(router.resolver, domain)
    result: dict[str, Any] = {"domain": domain, "routed": router.routed(domain), "mta_sts": None, "hosts": [],
                              "tls_rpt": rpt, "tls_rpt_error": rpt_failed or None}
    try:
        destinations = await router.route(domain)
    except RouteError as e:
        result["error"] = f"{e.status} {e.text}"
        return result
    if transport.mta_sts is not None and not result["routed"]:
        policy = await transport.mta_sts.policy(domain)
        result["mta_sts"] = policy and {"mode": policy.mode, "mx": list(policy.mx), "max_age": policy.max_age,
                                        "id": policy.policy_id}
    assessed = [(d, "") for d in destinations] if result["routed"] else await transport.assess(domain, destinations)
    for dest, refused in assessed:
        tls = dest.tls_policy
        result["hosts"].append({
            "host": dest.host, "port": dest.port, "address": dest.address, "mx_secure": dest.mx_secure,
            "policy": tls.kind if tls else None, "enforce": tls.enforce if tls else False,
            "tlsa": [dane.text(r) for r in tls.tlsa] if tls else [], "used": not refused,
            "verdict": refused or _verdict(dest)})
    await transport.close()
    return result


def _verdict(dest) -> str:
    tls = dest.tls_policy
    if dest.tls_required:
        return "STARTTLS with a certificate verified (smarthost_tls)"
    if tls is None:
        return "opportunistic STARTTLS (not verified)"
    if tls.kind == "dane":
        return "STARTTLS and a chain matching its TLSA records" if tls.tlsa else "STARTTLS (no usable TLSA record)"
    if tls.enforce:
        return "STARTTLS and a certificate valid for its name (MTA-STS enforce)"
    return "delivered as without the policy; failures reported (MTA-STS testing)"


def _lines(r: dict[str, Any]) -> list[str]:
    lines = [f"{r['domain']}" + (" (a route or the smarthost: no MTA-STS or DANE)" if r["routed"] else "")]
    if "error" in r:
        return [*lines, f"  no destination: {r['error']}"]
    sts = r["mta_sts"]
    lines.append(f"  MTA-STS: {sts['mode']}, mx {', '.join(sts['mx']) or '-'}, max_age {sts['max_age']} (id {sts['id']})"
                 if sts else "  MTA-STS: no policy")
    lines.append(f"  TLS-RPT: {', '.join(r['tls_rpt']) or r['tls_rpt_error'] or 'no record'}")
    for h in r["hosts"]:
        where = f"{h['host']}:{h['port']}" + (f" [{h['address']}]" if h["address"] else "")
        secure = " (MX DNSSEC-secure)" if h["mx_secure"] else ""
        tlsa = f"; TLSA {', '.join(h['tlsa'])}" if h["tlsa"] else ""
        lines.append(f"  {where}{secure}: {'used' if h['used'] else 'NOT used'}: {h['verdict']}{tlsa}")
    return lines


COMMANDS = [dns_group]
