"""`websofttt apikey …`: the keys tenants' apps use for their own API (/v1/, relay/api)."""
from __future__ import annotations

import click

from policy import apikeys
from relay.cli.common import emit, json_option, with_settings, with_store


@click.group()
def apikey() -> None:
    """API keys of tenants: what their apps present as `Authorization: Bearer wst_api_...` on /v1/.

    \b
    Example:
        websofttt apikey list acme
    """


@apikey.command("add")
@click.argument("tenant_id")
@click.option("--name", default=None, help="What the key is for (default: key-XXXXXX); unique per tenant.")
@click.option("--scope", type=click.Choice(apikeys.SCOPES), default=apikeys.Scope.READ.value, show_default=True,
              help="read: read its data; write: also change its suppressions.")
@with_settings
@with_store
def apikey_add(settings, store, tenant_id, name, scope) -> None:
    """Make a key for TENANT_ID (256 bits, prefix wst_api_) and print it once on stdout; the store keeps
    only its SHA-256.

    \b
    Example:
        websofttt apikey add acme --name crm --scope write
    """
    record, key = apikeys.add(store, tenant_id, name, scope)
    click.echo(key)
    click.echo(f"added API key {record.name} ({record.scope}) for tenant {tenant_id}; the key above is shown only now",
               err=True)


@apikey.command("list")
@click.argument("tenant_id")
@json_option
@with_settings
@with_store
def apikey_list(settings, store, tenant_id, as_json) -> None:
    """The tenant's keys: name, scope, created, last used (never the key).

    \b
    Example:
        websofttt apikey list acme --json
    """
    emit([k.as_json() for k in apikeys.of_tenant(store, tenant_id)], as_json,
         lambda items: [f"{k['name']:<24} {k['scope']:<6} created {k['created']}  last used {k['last_used'] or 'never'}"
                        for k in items])


@apikey.command("remove")
@click.argument("tenant_id")
@click.argument("name")
@with_settings
@with_store
def apikey_remove(settings, store, tenant_id, name) -> None:
    """Remove a key: the next request with it gets 401.

    \b
    Example:
        websofttt apikey remove acme crm
    """
    apikeys.remove(store, tenant_id, name)
    click.echo(f"removed API key {name} of tenant {tenant_id}")


COMMANDS = [apikey]
