"""Commands over records: credentials, suppressions, the queue, the audit log.

Individual records (addresses, message details) are shown only with --reason, audit-logged first.
"""
from __future__ import annotations

import contextlib
import os
import sys

import click

from policy import audit, credentials, events, suppression, tenants
from policy.suppression_import import import_lines
from relay.cli_common import emit, json_option, migrated_store, reason_option, with_settings
from relay.spool_files import drop, message_detail, queue_summary, retry_now

# ---- credentials


@click.group()
def credential() -> None:
    """SMTP credentials of tenants: a person's password (kept as scrypt) or a generated secret.

    \b
    Example:
        websofttt credential list
    """


@credential.command("add")
@click.argument("tenant_id")
@click.argument("username")
@click.option("--generate", is_flag=True,
              help="Make a random secret (256 bits, prefix wst_smtp_), print it once on stdout, keep its SHA-256.")
@with_settings
def credential_add(settings, tenant_id, username, generate) -> None:
    """Add USERNAME for TENANT_ID: a generated secret (recommended for apps), or a password read from stdin
    (first line) or prompted.

    A generated secret is checked in microseconds; a person's password costs an scrypt check (~0.1 s of
    CPU) at each login that the worker has not verified within submission.auth_cache_ttl.

    \b
    Examples:
        websofttt credential add acme app1 --generate
        printf '%s\\n' "$PASSWORD" | websofttt credential add acme app2
    """
    if generate:
        secret = credentials.generate(migrated_store(settings), tenant_id, username)
        click.echo(secret)
        click.echo(f"added generated credential {username} for tenant {tenant_id}; the secret above is shown "
                   f"only now", err=True)
        return
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    credentials.add(migrated_store(settings), tenant_id, username, password)
    click.echo(f"added credential {username} for tenant {tenant_id}")


@credential.command("remove")
@click.argument("username")
@with_settings
def credential_remove(settings, username) -> None:
    """Remove a credential; sessions already authenticated keep going until they end.

    \b
    Example:
        websofttt credential remove app1
    """
    credentials.remove(migrated_store(settings), username)
    click.echo(f"removed credential {username}")


@credential.command("list")
@json_option
@with_settings
def credential_list(settings, as_json) -> None:
    """List usernames with their tenant and kind (never the hashes).

    \b
    Example:
        websofttt credential list --json
    """
    emit(credentials.all_credentials(migrated_store(settings)), as_json,
         lambda rows: [f"{r['username']:<32} {r['tenant']:<24} {r['kind']:<9} created={r['created']} "
                       f"last_used={r['last_used'] or '-'}" for r in rows])


# ---- suppressions

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
def suppression_add(settings, address, tenant_id, cause) -> None:
    """Suppress ADDRESS.

    \b
    Example:
        websofttt suppression add someone@example.net --tenant acme --cause unsubscribe
    """
    store = migrated_store(settings)
    if tenant_id:
        tenants.require(store, tenant_id)
    added = suppression.add(store, address, _scope(tenant_id), cause, source="cli")
    click.echo("added" if added else "already suppressed")


@suppression_group.command("remove")
@click.argument("address")
@click.option("--tenant", "tenant_id", default=None, help="The tenant scope (default: global).")
@with_settings
def suppression_remove(settings, address, tenant_id) -> None:
    """Remove ADDRESS from a scope.

    \b
    Example:
        websofttt suppression remove someone@example.net --tenant acme
    """
    if not suppression.remove(migrated_store(settings), address, _scope(tenant_id)):
        raise click.UsageError(f"{address} is not suppressed in scope {_scope(tenant_id)}")
    click.echo("removed")


@suppression_group.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8", errors="replace"))
@click.option("--tenant", "tenant_id", default=None, help="Suppress for this tenant only (default: global).")
@click.option("--cause", default="manual", type=click.Choice(suppression.CAUSES), show_default=True)
@json_option
@with_settings
def suppression_import(settings, file, tenant_id, cause, as_json) -> None:
    """Suppress every address in FILE ('-': stdin): one per line, or CSV with an email/address column.

    Shows a progress bar on a terminal, then a summary: added, already present, and the invalid
    lines with their numbers (never imported).

    \b
    Example:
        websofttt suppression import optouts.csv --tenant acme --cause unsubscribe
    """
    store = migrated_store(settings)
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
def suppression_list(settings, tenant_id, reason, as_json) -> None:
    """List suppressed addresses (individual records: --reason required, audit-logged).

    \b
    Example:
        websofttt suppression list --tenant acme --reason "ticket 4711: customer asks why mail stopped"
    """
    store = migrated_store(settings)
    audit.record(store, "suppression list", f"scope={tenant_id or 'all'}", reason)
    emit([e.as_json() for e in suppression.entries(store, tenant_id)], as_json,
         lambda rows: [f"{r['address']:<40} {r['scope']:<16} {r['cause']:<12} {r['created']}" for r in rows])


# ---- queue

@click.group()
def queue() -> None:
    """This node's queue.

    \b
    Example:
        websofttt queue list
    """


@queue.command("list")
@json_option
@with_settings
def queue_list(settings, as_json) -> None:
    """Queued messages, oldest first: id, tenant, size and recipient counts by state (no addresses).

    \b
    Example:
        websofttt queue list
    """
    emit(queue_summary(settings.spool_dir), as_json,
         lambda rows: [f"{r['id']:<40} {r['tenant']:<20} {r['received']} {r['size']:>9} "
                       + " ".join(f"{k}={v}" for k, v in sorted(r["states"].items())) for r in rows]
         or ["queue is empty"])


@queue.command("show")
@click.argument("queue_id")
@reason_option
@json_option
@with_settings
def queue_show(settings, queue_id, reason, as_json) -> None:
    """One message with its envelope and recipients (--reason required, audit-logged).

    \b
    Example:
        websofttt queue show 01abc.node1 --reason "ticket 4712: delivery delay"
    """
    store = migrated_store(settings)
    audit.record(store, "queue show", queue_id, reason)
    detail = message_detail(settings.spool_dir, queue_id)
    if detail is None:
        raise click.UsageError(f"no message {queue_id} in this node's queue")
    detail["events"] = events.of_message(store, queue_id)
    emit(detail, as_json, lambda d: [f"id: {d['id']}", f"tenant: {d['tenant']}", f"from: {d['mail_from']}",
                                     f"received: {d['received']}", f"size: {d['size']}"]
         + [f"  {r['recipient']}  {r['state']}  attempts={r['attempts']}  {r['last_reply'] or ''}"
            for r in d["recipients"]]
         + [f"  {e['time']} {e['kind']:<10} {e['recipient']}  {e['detail']}" for e in d["events"]])


@queue.command("retry")
@click.argument("queue_id", required=False)
@click.option("--all", "all_", is_flag=True, help="Every deferred recipient of this node.")
@with_settings
def queue_retry(settings, queue_id, all_) -> None:
    """Try deferred recipients now instead of at their next scheduled attempt.

    \b
    Example:
        websofttt queue retry --all
    """
    if bool(queue_id) == all_:
        raise click.UsageError("give either QUEUE_ID or --all")
    click.echo(f"{retry_now(settings.spool_dir, queue_id)} recipient(s) due now")


@queue.command("drop")
@click.argument("queue_id")
@with_settings
def queue_drop(settings, queue_id) -> None:
    """Stop delivering a message: pending recipients become 'dropped', the body is erased.

    \b
    Example:
        websofttt queue drop 06h4kehqevd6smsl6c.node1
    """
    count = drop(settings.spool_dir, queue_id)
    if count < 0:
        raise click.UsageError(f"no message {queue_id} in this node's queue")
    click.echo(f"dropped {queue_id} ({count} pending recipient(s))")


# ---- audit

@click.command("audit")
@click.argument("action", type=click.Choice(["list"]))
@json_option
@with_settings
def audit_cmd(settings, action, as_json) -> None:
    """Who viewed which individual records, when and why.

    \b
    Example:
        websofttt audit list --json
    """
    emit(audit.entries(migrated_store(settings)), as_json,
         lambda rows: [f"{r['time']} {r['os_user']:<12} {r['command']:<18} {r['shown']:<30} {r['reason']}"
                       for r in rows])


COMMANDS = [credential, suppression_group, queue, audit_cmd]
