"""`websofttt suppression …`: recipients that must not be mailed again.

Listing addresses shows individual records: only with --reason, audit-logged first.
"""
from __future__ import annotations

import contextlib
import os
import sys

import click

from policy import audit, suppression, tenants
from policy.suppression_import import import_lines
from relay.cli.common import emit, json_option, reason_option, with_settings, with_store


# The causes as their stored, lower-case values (a Choice of enum members would offer their names).


def _scope(tenant_id: str | None) -> str:
    return tenant_id or suppression.GLOBAL


@click.group("suppression")
def suppression_group() -> None:
    """Recipients that must not be mailed again (per tenant or global).

    \b
    Example:
        websofttt suppression add someone@example.net
    """


@suppression_group.command("add")
@click.argument("address")
@click.option("--tenant", "tenant_id", default=None, help="Suppress for this tenant only (default: global).")
@click.option("--cause", default="manual", type=click.Choice(suppression.CAUSES), show_default=True)
@with_settings
@with_store
def suppression_add(settings, store, address, tenant_id, cause) -> None:
    """Suppress ADDRESS.

    \b
    Example:
        websofttt suppression add someone@example.net --tenant acme --cause unsubscribe
    """
    if tenant_id:
        tenants.require(store, tenant_id)
    added = suppression.add(store, address, _scope(tenant_id), cause, source="cli")
    click.echo("added" if added else "already suppressed")


@suppression_group.command("remove")
@click.argument("address")
@click.option("--tenant", "tenant_id", default=None, help="The tenant scope (default: global).")
@with_settings
@with_store
def suppression_remove(settings, store, address, tenant_id) -> None:
    """Remove ADDRESS from a scope.

    \b
    Example:
        websofttt suppression remove someone@example.net --tenant acme
    """
    if not suppression.remove(store, address, _scope(tenant_id)):
        raise click.UsageError(f"{address} is not suppressed in scope {_scope(tenant_id)}")
    click.echo("removed")


@suppression_group.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8", errors="replace"))
@click.option("--tenant", "tenant_id", default=None, help="Suppress for this tenant only (default: global).")
@click.option("--cause", default="manual", type=click.Choice(suppression.CAUSES), show_default=True)
@json_option
@with_settings
@with_store
def suppression_import(settings, store, file, tenant_id, cause, as_json) -> None:
    """Suppress every address in FILE ('-': stdin): one per line, or CSV with an email/address column.

    Shows a progress bar on a terminal, then a summary: added, already present, and the invalid
    lines with their numbers (never imported).

    \b
    Example:
        websofttt suppression import optouts.csv --tenant acme --cause unsubscribe
    """
    if tenant_id:
        tenants.require(store, tenant_id)
    try:
        size = os.fstat(file.fileno()).st_size or None
    except (OSError, ValueError):
        size = None
    bar = click.progressbar(length=size, label="importing", file=sys.stderr) if size else contextlib.nullcontext()
    with bar as progress:                     # a file of known size: a bar on a terminal (stdin: none)
        source = f"import {getattr(file, 'name', '-')}"[:200]
        result = import_lines(store, file, _scope(tenant_id), cause, source, progress.update if progress else None)
    emit(result.as_json(), as_json, lambda r: [f"added: {r['added']}", f"already present: {r['already_present']}",
                                               f"invalid lines: {r['invalid']}"]
         + [f"  line {i['line']}: {i['text']}" for i in r["invalid_lines"]]
         + ([f"  (first {len(r['invalid_lines'])} shown)"] if r["invalid"] > len(r["invalid_lines"]) else []))


@suppression_group.command("list")
@click.option("--tenant", "tenant_id", default=None, help="Only this tenant's scope.")
@reason_option
@json_option
@with_settings
@with_store
def suppression_list(settings, store, tenant_id, reason, as_json) -> None:
    """List suppressed addresses (individual records: --reason required, audit-logged).

    \b
    Example:
        websofttt suppression list --tenant acme --reason "ticket 4711: customer asks why mail stopped"
    """
    audit.record(store, "suppression list", f"scope={tenant_id or 'all'}", reason)
    emit([e.as_json() for e in suppression.entries(store, tenant_id)], as_json,
         lambda rows: [f"{r['address']:<40} {r['scope']:<16} {r['cause']:<12} {r['created']}" for r in rows])


COMMANDS = [suppression_group]
