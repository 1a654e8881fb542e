"""`websofttt credential …`: tenants' SMTP credentials (a person's password or a generated secret)."""
from __future__ import annotations

import sys

import click

from policy import credentials
from relay.cli.common import command_store, emit, json_option, with_settings, with_store


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
        secret = credentials.generate(command_store(settings), tenant_id, username)
        click.echo(secret)
        click.echo(f"added generated credential {username} for tenant {tenant_id}; the secret above is shown "
                   f"only now", err=True)
        return
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    credentials.add(command_store(settings), tenant_id, username, password)     # opened once the password is read
    click.echo(f"added credential {username} for tenant {tenant_id}")


@credential.command("remove")
@click.argument("username")
@with_settings
@with_store
def credential_remove(settings, store, username) -> None:
    """Remove a credential; sessions already authenticated keep going until they end.

    \b
    Example:
        websofttt credential remove app1
    """
    credentials.remove(store, username)
    click.echo(f"removed credential {username}")


@credential.command("list")
@json_option
@with_settings
@with_store
def credential_list(settings, store, as_json) -> None:
    """List usernames with their tenant and kind (never the hashes).

    \b
    Example:
        websofttt credential list --json
    """
    emit(credentials.all_credentials(store), as_json,
         lambda rows: [f"{r['username']:<32} {r['tenant']:<24} {r['kind']:<9} created={r['created']} "
                       f"last_used={r['last_used'] or '-'}" for r in rows])


COMMANDS = [credential]
