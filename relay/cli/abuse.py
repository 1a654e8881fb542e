"""`websofttt complaint …` and `websofttt case …`: what the abuse and privacy desk recorded.

Complaints and cases name people: showing them needs --reason and writes an audit row. `case list`
shows ids, kinds, status and tenants only (no addresses, no subjects), so it needs none.
"""
from __future__ import annotations

import click

from policy import audit, cases, complaints
from relay.cli.common import emit, json_option, reason_option, with_settings, with_store


@click.group()
def complaint() -> None:
    """Complaints about tenants' mail (ARF reports and people writing to the abuse address).

    \b
    Example:
        websofttt complaint list --tenant acme --reason "review of acme's suspension"
    """


@complaint.command("list")
@click.option("--tenant", "tenant_id", default=None, help="Only this tenant's complaints.")
@reason_option
@json_option
@with_settings
@with_store
def complaint_list(settings, store, tenant_id, reason, as_json) -> None:
    """List complaints, newest first (individual records: --reason required, audit-logged).

    `counted` says whether it counts towards the tenant's complaint rate (identified by a token or
    a sent copy's Message-ID; headers anyone can write never count).

    \b
    Example:
        websofttt complaint list --tenant acme --json --reason "ticket 4711"
    """
    audit.record(store, "complaint list", f"tenant={tenant_id or 'all'}", reason)
    emit(complaints.entries(store, tenant_id), as_json,
         lambda rows: [f"{r['received']}  {r['tenant']:<16} {r['recipient'] or '(redacted)':<36} "
                       f"{r['feedback_type']:<9} {r['identified_by']:<10} {'counted' if r['counted'] else '-'}"
                       f"{'  case ' + r['case'] if r['case'] else ''}" for r in rows] or ["no complaints"])


@click.group()
def case() -> None:
    """Cases: what people wrote to the abuse and privacy addresses.

    \b
    Example:
        websofttt case list
    """


@case.command("list")
@click.option("--kind", type=click.Choice(tuple(cases.KINDS)), default=None, help="Only abuse or privacy cases.")
@json_option
@with_settings
@with_store
def case_list(settings, store, kind, as_json) -> None:
    """List cases, newest first: ids, kind, status and tenant only (no addresses).

    \b
    Example:
        websofttt case list --kind privacy --json
    """
    emit(cases.entries(store, kind), as_json,
         lambda rows: [f"{r['id']}  {r['kind']:<7} {r['opened']}  {r['status']:<6} tenant={r['tenant'] or '-'}  "
                       f"{'acknowledged' if r['acknowledged'] else 'not acknowledged'}" for r in rows] or ["no cases"])


@case.command("show")
@click.argument("case_id")
@reason_option
@json_option
@with_settings
@with_store
def case_show(settings, store, case_id, reason, as_json) -> None:
    """Show one case: complainant, subject, evidence (an individual record: --reason required, audit-logged).

    \b
    Example:
        websofttt case show A-20261125-7KQ2MD --reason "answering the complainant"
    """
    audit.record(store, "case show", case_id, reason)
    found = cases.get(store, case_id)
    if found is None:
        raise click.BadParameter(f"no case {case_id!r} (see websofttt case list)", param_hint="CASE_ID")
    emit(found, as_json, lambda c: [f"{k}: {'' if v is None else v}" for k, v in c.items()])


COMMANDS = [complaint, case]
