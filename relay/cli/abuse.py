"""`websofttt complaint …` and `websofttt case …`: what the abuse and privacy desk recorded.

Complaints and cases name people: showing them needs --reason and writes an audit row. `case list`
shows ids, kinds, status and tenants only (no addresses, no subjects), so it needs none.
"""
from __future__ import annotations

import click

from policy import audit, cases, complaints
from policy.values import parse_duration
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


def _older_than(ctx, param, value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(f"{value!r} must be {e}") from None


@case.command("list")
@click.option("--kind", type=click.Choice(tuple(cases.KINDS)), default=None, help="Only abuse or privacy cases.")
@click.option("--open", "open_only", is_flag=True, help="Only cases still open.")
@click.option("--older-than", default=None, callback=_older_than, metavar="DURATION",
              help="Only cases opened longer ago than this, e.g. 24h (with --open: what is overdue).")
@json_option
@with_settings
@with_store
def case_list(settings, store, kind, open_only, older_than, as_json) -> None:
    """List cases, newest first: ids, kind, status, tenant and assignee only (no addresses).

    \b
    Example:
        websofttt case list --open --older-than 24h --json
    """
    emit(cases.entries(store, kind, open_only, older_than), as_json,
         lambda rows: [f"{r['id']}  {r['kind']:<7} {r['opened']}  {r['status']:<6} tenant={r['tenant'] or '-'}  "
                       f"{'acknowledged' if r['acknowledged'] else 'not acknowledged'}  "
                       f"assignee={r['assignee'] or '-'}" for r in rows] or ["no cases"])


@case.command("show")
@click.argument("case_id")
@reason_option
@json_option
@with_settings
@with_store
def case_show(settings, store, case_id, reason, as_json) -> None:
    """Show one case with its history: complainant, subject, evidence, notes (an individual record:
    --reason required, audit-logged).

    \b
    Example:
        websofttt case show A-20261125-7KQ2MD --reason "answering the complainant"
    """
    audit.record(store, "case show", case_id, reason)
    found = cases.require(store, case_id) | {"history": cases.history(store, case_id)}
    emit(found, as_json, lambda c: [f"{k}: {'' if v is None else v}" for k, v in c.items() if k != "history"]
         + [f"  {h['time']} {h['author']}: {h['action']}{': ' + h['text'] if h['text'] else ''}" for h in c["history"]])


@case.command("assign")
@click.argument("case_id")
@click.argument("user")
@with_settings
@with_store
def case_assign(settings, store, case_id, user) -> None:
    """Give a case to USER, who works it to its end (audited).

    \b
    Example:
        websofttt case assign A-20261125-7KQ2MD maria
    """
    _changed(store, "case assign", case_id, f"assigned to {user}", cases.assign(store, case_id, user, audit.os_user()))


@case.command("note")
@click.argument("case_id")
@click.argument("text")
@with_settings
@with_store
def case_note(settings, store, case_id, text) -> None:
    """Add a note to a case's history (audited).

    \b
    Example:
        websofttt case note A-20261125-7KQ2MD "asked acme for the list's opt-in records"
    """
    _changed(store, "case note", case_id, "note added", cases.note(store, case_id, text, audit.os_user()))


@case.command("close")
@click.argument("case_id")
@click.option("--resolution", required=True, help="How the case ended (kept in its history).")
@with_settings
@with_store
def case_close(settings, store, case_id, resolution) -> None:
    """Close a case; it keeps its acknowledgement and history, and a reply quoting it reopens it (audited).

    \b
    Example:
        websofttt case close A-20261125-7KQ2MD --resolution "acme removed the address; complainant told"
    """
    _changed(store, "case close", case_id, f"closed: {resolution}", cases.close(store, case_id, resolution,
                                                                              audit.os_user()))


def _changed(store, command: str, case_id: str, what: str, case_row: dict) -> None:
    """The audit row of a change to a case (its reason: what changed), then one line."""
    audit.record(store, command, case_row["id"], what)
    click.echo(f"case {case_row['id']}: {what} (status {case_row['status']})")


COMMANDS = [complaint, case]
