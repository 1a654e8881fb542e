"""`websofttt tenant …`: the provider's customers, their standing, suspension, terms and offboarding.

Tenants are customers, not individuals: showing them needs no reason (README, Operations).
"""
from __future__ import annotations

import click

from policy import audit, dkimkeys, egress, holds, standing, tenants, terms
from relay import spool_files
from relay.cli.common import emit, json_option, with_settings, with_store


@click.group()
def tenant() -> None:
    """Tenants: the provider's customers.

    \b
    Example:
        websofttt tenant list
    """


def _tenant_lines(items: list[dict]) -> list[str]:
    lines = []
    for t in items:
        extra = f" ({t['reason']})" if t["reason"] else ""
        lines.append(f"{t['id']:<24} {t['status']}{extra}  terms={t['terms_version'] or '-'}  "
                     f"from={','.join(t['allowed_from']) or '-'}  networks={','.join(t['networks']) or '-'}  "
                     f"rate={t['rate'] or 'default'}")
        if t["dmarc_unaligned"]:
            lines.append(f"  not DMARC-aligned: mail From {', '.join(t['dmarc_unaligned'])} carries only the provider's "
                         f"signature (websofttt dkim add-domain {t['id']} DOMAIN)")
        s = t["standing"]
        lines.append(f"  since {s['since']}: complaint rate {s['complaint_rate']:.2%} ({s['complaints']} for "
                     f"{s['delivered']} deliveries, limit {s['complaint_limit']:.2%}), hard bounce rate "
                     f"{s['bounce_rate']:.2%} ({s['hard_bounces']} for {s['delivered'] + s['failed']} attempts, "
                     f"limit {s['bounce_limit']:.2%})")
    return lines


def _tenant_json(store, tenant: tenants.Tenant, rules) -> dict:
    """The tenant with its DKIM state (which From domains are not DMARC-aligned) and its standing (rates)."""
    signed = {k.domain for k in dkimkeys.all_keys(store, tenant.id)}
    return tenant.as_json() | {"dkim_domains": sorted(signed),
                               "dmarc_unaligned": [d for d in tenant.allowed_from if d not in signed],
                               "standing": standing.standing(store, rules, tenant.id).as_json()
                               | {"complaint_limit": rules.complaint_rate, "bounce_limit": rules.bounce_rate}}


@tenant.command("add")
@click.argument("tenant_id")
@click.option("--allow-from", "allow_from", multiple=True, metavar="DOMAIN", help="Domain it may use in From.")
@click.option("--network", multiple=True, metavar="CIDR", help="Network it may submit from without AUTH.")
@click.option("--rate", default=None, metavar="N/PERIOD", help="Message limit, e.g. 500/1h (default: policy).")
@click.option("--name", default=None, help="Display name recipients see (unsubscribe page); default: the id.")
@click.option("--contact", default=None, metavar="EMAIL", help="Where the provider writes to the tenant.")
@click.option("--pool", default=None, metavar="NAME", help="The egress pool its copies leave from ([egress.pools.NAME]).")
@json_option
@with_settings
@with_store
def tenant_add(settings, store, tenant_id, allow_from, network, rate, name, contact, pool, as_json) -> None:
    """Add a tenant (it must still accept the terms).

    \b
    Example:
        websofttt tenant add acme --name "Acme Inc." --allow-from acme.example --network 10.1.0.0/16
    """
    t = tenants.add(store, tenant_id, list(allow_from), list(network), rate, name, contact, pool,
                    egress.pool_names(settings.egress.pools))
    emit(_tenant_json(store, t, settings.policy), as_json, lambda d: [f"added tenant {d['id']}; it must accept the terms: "
                                          f"websofttt tenant accept-terms {d['id']}"])


@tenant.command("set")
@click.argument("tenant_id")
@click.option("--add-from", multiple=True, metavar="DOMAIN", help="A domain it may use in From.")
@click.option("--remove-from", multiple=True, metavar="DOMAIN", help="A From domain it may no longer use.")
@click.option("--add-network", multiple=True, metavar="CIDR", help="A network it may submit from without AUTH.")
@click.option("--remove-network", multiple=True, metavar="CIDR", help="A network it may no longer submit from.")
@click.option("--rate", default=None, metavar="N/PERIOD", help="Its message limit, e.g. 500/1h.")
@click.option("--name", default=None, help="Display name recipients see (unsubscribe page).")
@click.option("--contact", default=None, metavar="EMAIL", help="Where the provider writes to the tenant.")
@click.option("--pool", default=None, metavar="NAME", help="The egress pool its copies leave from ([egress.pools.NAME]).")
@json_option
@with_settings
@with_store
def tenant_set(settings, store, tenant_id, add_from, remove_from, add_network, remove_network, rate, name, contact,
               pool, as_json) -> None:
    """Change a tenant: From domains, networks, rate, display name, contact, egress pool (all or nothing, an event row).
    Running workers and other nodes see it within submission.trust_cache_ttl (5 s).

    \b
    Example:
        websofttt tenant set acme --add-from mail.acme.example --rate 2000/1h --contact ops@acme.example
    """
    t, changed = tenants.change(store, tenant_id, tenants.Change(add_from, remove_from, add_network, remove_network,
                                                                 rate, name, contact, pool,
                                                                 egress.pool_names(settings.egress.pools)))
    emit(_tenant_json(store, t, settings.policy) | {"changed": changed}, as_json,
         lambda d: [f"tenant {d['id']}: " + ("; ".join(d["changed"]) or "nothing to change")])


@tenant.command("list")
@json_option
@with_settings
@with_store
def tenant_list(settings, store, as_json) -> None:
    """List tenants.

    \b
    Example:
        websofttt tenant list --json
    """
    emit([_tenant_json(store, t, settings.policy) for t in tenants.all_tenants(store)], as_json, _tenant_lines)


@tenant.command("show")
@click.argument("tenant_id")
@json_option
@with_settings
@with_store
def tenant_show(settings, store, tenant_id, as_json) -> None:
    """Show one tenant.

    \b
    Example:
        websofttt tenant show acme
    """
    emit(_tenant_json(store, tenants.require(store, tenant_id), settings.policy), as_json, lambda d: _tenant_lines([d]))


@tenant.command("suspend")
@click.argument("tenant_id")
@click.option("--reason", required=True, help="Why (shown to the tenant in the SMTP reply).")
@with_settings
@with_store
def tenant_suspend(settings, store, tenant_id, reason) -> None:
    """Stop a tenant from sending (MAIL FROM answers 550 5.7.1 with the reason).

    \b
    Example:
        websofttt tenant suspend acme --reason "spam complaints under review"
    """
    tenants.suspend(store, tenant_id, reason)
    click.echo(f"suspended {tenant_id}")


@tenant.command("resume")
@click.argument("tenant_id")
@with_settings
@with_store
def tenant_resume(settings, store, tenant_id) -> None:
    """Let a suspended tenant send again.

    \b
    Example:
        websofttt tenant resume acme
    """
    tenants.resume(store, tenant_id)
    click.echo(f"resumed {tenant_id}")


@tenant.command("remove")
@click.argument("tenant_id")
@click.option("--reason", required=True, help="Why (audit-logged, and shown by `tenant show`).")
@click.option("--erase", is_flag=True, help="Also erase its data: DKIM keys, its suppressions, addresses in its records.")
@json_option
@with_settings
@with_store
def tenant_remove(settings, store, tenant_id, reason, erase, as_json) -> None:
    """Offboard a tenant: its credentials go (AUTH answers 535), its queued mail is dropped and erased.

    Without --erase it is only disabled, and `tenant restore` brings it back (with new credentials). With
    --erase its DKIM keys and its own suppressions go too (global ones stay), and its complaints, cases,
    bounces and events keep their counts without addresses; that is for good, and refused under a legal
    hold on the tenant. Audited. On several nodes, run it on each: the store part is shared, and each node
    drops its own queue (the others drop the tenant's mail at its next turn anyway).

    \b
    Example:
        websofttt tenant remove acme --reason "contract ended 2026-12-31" --erase
    """
    held = holds.covering(store, tenant=tenants.require(store, tenant_id).id) if erase else []
    if held:
        raise click.ClickException(
            f"tenant {tenant_id} is under legal hold: {holds.listed(held)}"
            + ". Nothing was removed; remove it without --erase, or once the hold ends (websofttt privacy release)")
    audit.record(store, "tenant remove" + " --erase" * erase, tenant_id, reason)
    counts = tenants.remove(store, tenant_id, reason, erase)
    counts["queue"] = spool_files.drop_tenant(settings.spool_dir, tenant_id, erase)
    emit({"tenant": tenant_id, "erased": erase, "removed": counts}, as_json,
         lambda d: [f"removed tenant {tenant_id}" + (" and erased its data" if erase else
                                                     f" (websofttt tenant restore {tenant_id} brings it back)")]
         + [f"{what}: {n}" for what, n in d["removed"].items()])


@tenant.command("restore")
@click.argument("tenant_id")
@with_settings
@with_store
def tenant_restore(settings, store, tenant_id) -> None:
    """Bring back a tenant removed without --erase; it needs new credentials (its old ones were removed).

    \b
    Example:
        websofttt tenant restore acme
    """
    tenants.restore(store, tenant_id)
    click.echo(f"restored {tenant_id}; give it credentials: websofttt credential add {tenant_id} USERNAME")


@tenant.command("accept-terms")
@click.argument("tenant_id")
@click.option("--version", "version", default=None, help="The terms version accepted (default: the newest published).")
@with_settings
@with_store
def tenant_accept_terms(settings, store, tenant_id, version) -> None:
    """Record that the tenant accepted a terms version (websofttt terms list); it also covers earlier ones.

    \b
    Example:
        websofttt tenant accept-terms acme --version 2027-03
    """
    click.echo(f"{tenant_id} accepted terms {terms.accept(store, settings.provider.terms_version, tenant_id, version)}")


COMMANDS = [tenant]
