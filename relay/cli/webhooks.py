"""`websofttt webhook …`: tenants' endpoints for their events (policy/webhooks.py, sent by relay/webhooks.py)."""
from __future__ import annotations

import asyncio

import click

from policy import webhooks
from policy.events import TYPES
from relay import webhooks as dispatcher
from relay.cli.common import emit, json_option, with_settings, with_store


@click.group()
def webhook() -> None:
    """Webhooks: where the relay posts a tenant's events, signed (Standard Webhooks).

    \b
    Example:
        websofttt webhook list acme
    """


@webhook.command("add")
@click.argument("tenant_id")
@click.argument("url")
@click.option("--events", default=",".join(TYPES), show_default=True, help="The event types to send, comma-separated.")
@with_settings
@with_store
def webhook_add(settings, store, tenant_id, url, events) -> None:
    """Post TENANT_ID's events to URL (https://) from now on; prints the signing secret once on stdout.

    \b
    Example:
        websofttt webhook add acme https://hooks.acme.example/relay --events delivered,bounced,complained
    """
    hook, secret = webhooks.add(store, tenant_id, url, [e.strip() for e in events.split(",") if e.strip()],
                                settings.webhooks.allow_private_targets)
    click.echo(secret)
    click.echo(f"added webhook {hook.id} for tenant {tenant_id}: {hook.url}; the secret above is shown only now", err=True)


@webhook.command("list")
@click.argument("tenant_id")
@json_option
@with_settings
@with_store
def webhook_list(settings, store, tenant_id, as_json) -> None:
    """The tenant's endpoints: URL, events, and whether they answer (ok, retrying or failing since when).

    \b
    Example:
        websofttt webhook list acme --json
    """
    emit([h.as_json() for h in webhooks.of_tenant(store, tenant_id)], as_json, lambda items: [
        f"{h['id']:<4} {h['url']}  {','.join(h['events'])}  {h['status']}"
        + (f" ({h['attempts']} attempts; last: {h['last_error']})" if h["last_error"] else "") for h in items])


@webhook.command("remove")
@click.argument("tenant_id")
@click.argument("hook_id", type=int)
@with_settings
@with_store
def webhook_remove(settings, store, tenant_id, hook_id) -> None:
    """Stop posting to an endpoint.

    \b
    Example:
        websofttt webhook remove acme 3
    """
    webhooks.remove(store, tenant_id, hook_id)
    click.echo(f"removed webhook {hook_id} of tenant {tenant_id}")


@webhook.command("rotate-secret")
@click.argument("tenant_id")
@click.argument("hook_id", type=int)
@with_settings
@with_store
def webhook_rotate(settings, store, tenant_id, hook_id) -> None:
    """A new signing secret, printed once; the old one keeps signing beside it for 24 h.

    \b
    Example:
        websofttt webhook rotate-secret acme 3
    """
    click.echo(webhooks.rotate(store, tenant_id, hook_id))
    click.echo("events are signed with both secrets for 24 h", err=True)


@webhook.command("test")
@click.argument("tenant_id")
@click.argument("hook_id", type=int)
@with_settings
@with_store
def webhook_test(settings, store, tenant_id, hook_id) -> None:
    """Post one signed `test` event now and say how the endpoint answered (exit 1 if not 2xx).

    \b
    Example:
        websofttt webhook test acme 3
    """
    error = asyncio.run(dispatcher.send_test(settings, webhooks.get(store, tenant_id, hook_id)))
    if error:
        raise click.ClickException(f"webhook {hook_id} did not accept the test event: {error}")
    click.echo(f"webhook {hook_id} accepted the test event")


COMMANDS = [webhook]
