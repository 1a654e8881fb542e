"""`websofttt`: the command line, and the composition root that wires every role.

Exit codes: 0 ok, 1 operational failure, 2 bad usage or configuration (the message names what).
Commands that show individual records take --reason and write an audit row first.
"""
from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import click

from policy import dkimkeys, tenants
from policy.audit import ReasonRequired
from policy.keys import KeyMaterialError, check_tls_files, generate_dkim_key, generate_tls_cert
from policy.settings import ROLES, ConfigError, Settings
from policy.suppression import SuppressionError
from policy.tenants import TenantError
from policy.tokens import TokenError, TokenKeys, ensure_secret
from relay import cli_records
from relay.cli_common import ServeError, emit, json_option, open_store, with_settings
from relay.cli_records import provider_dkim_records
from relay.signing import provider_keys



def starters() -> dict:
    """The roles that live in inbound/, wired here (the composition root); imported only to serve."""
    from inbound import service
    return {"inbound": service.start_inbound, "http": service.start_http}


USER_ERRORS = (ConfigError, TokenError, TenantError, SuppressionError, ReasonRequired, KeyMaterialError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="websofttt-relay")
def cli() -> None:
    """WebSoftTT Relay: multi-tenant SMTP relay and inbound mail processor.

    \b
    Example:
        websofttt init && websofttt serve
    """


@cli.command()
@click.option("--if-new", is_flag=True, help="Do nothing if the store already exists (used by `make run`).")
@with_settings
def init(settings: Settings, if_new: bool) -> None:
    """Create the data dir, store, token secret, DKIM key and TLS certificate; print the DNS records.

    Safe to run again: what exists is kept.

    \b
    Example:
        websofttt init --config /etc/websofttt/websofttt.toml
    """
    if if_new and settings.store_path.exists():
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)
    secret_at = ensure_secret(store, settings.tokens.secret_file)
    generate_dkim_key(settings.dkim_key)
    if settings.dkim.ed25519_key_file is not None:
        generate_dkim_key(settings.dkim.ed25519_key_file, ed25519_key=True)
    if settings.self_signed:
        generate_tls_cert(settings.tls_cert, settings.tls_key, settings.provider.hostname)
    check_tls_files(settings.tls_cert, settings.tls_key)
    click.echo(f"data dir:     {settings.data_dir}")
    click.echo(f"store:        {settings.store_path}")
    click.echo(f"token secret: {secret_at}")
    click.echo(f"DKIM key:     {settings.dkim_key}")
    click.echo(f"TLS:          {settings.tls_cert}{' (self-signed)' if settings.self_signed else ''}")
    click.echo("\nPublish these DNS records:")
    for line in dns_records(settings):
        click.echo(line)


def dns_records(settings: Settings) -> list[str]:
    p = settings.provider
    return [*provider_dkim_records(settings),
            f"{p.bounce_domain}. IN MX 10 {p.hostname}.",
            f'{p.bounce_domain}. IN TXT "v=spf1 a:{p.hostname} -all"']


@cli.command()
@click.option("--only", "role", type=click.Choice(ROLES), default=None,
              help="Run one role only (default: all).")
@with_settings
def serve(settings: Settings, role: str | None) -> None:
    """Run the node's listeners in `node.workers` processes until SIGTERM.

    \b
    Example:
        websofttt serve --only submission
    """
    check_tls_files(settings.tls_cert, settings.tls_key)
    provider_keys(settings)
    from relay import serve as serve_mod     # the servers' imports cost a second: only `serve` pays for them
    serve_mod.smarthost_auth(settings)
    serve_mod.setup_logging()
    sys.exit(serve_mod.serve(settings, (role,) if role else ROLES, starters()))


# ---- tenants

@cli.group()
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
    return lines


def _tenant_json(store, tenant: tenants.Tenant) -> dict:
    """The tenant with its DKIM state: which From domains have their own key, which are not DMARC-aligned."""
    signed = {k.domain for k in dkimkeys.all_keys(store, tenant.id)}
    return tenant.as_json() | {"dkim_domains": sorted(signed),
                               "dmarc_unaligned": [d for d in tenant.allowed_from if d not in signed]}


@tenant.command("add")
@click.argument("tenant_id")
@click.option("--allow-from", "allow_from", multiple=True, metavar="DOMAIN", help="Domain it may use in From.")
@click.option("--network", multiple=True, metavar="CIDR", help="Network it may submit from without AUTH.")
@click.option("--rate", default=None, metavar="N/PERIOD", help="Message limit, e.g. 500/1h (default: policy).")
@click.option("--name", default=None, help="Display name recipients see (unsubscribe page); default: the id.")
@json_option
@with_settings
def tenant_add(settings, tenant_id, allow_from, network, rate, name, as_json) -> None:
    """Add a tenant (it must still accept the terms).

    \b
    Example:
        websofttt tenant add acme --name "Acme Inc." --allow-from acme.example --network 10.1.0.0/16
    """
    store = open_store(settings)
    t = tenants.add(store, tenant_id, list(allow_from), list(network), rate, name)
    emit(_tenant_json(store, t), as_json, lambda d: [f"added tenant {d['id']}; it must accept the terms: "
                                          f"websofttt tenant accept-terms {d['id']}"])


@tenant.command("list")
@json_option
@with_settings
def tenant_list(settings, as_json) -> None:
    """List tenants.

    \b
    Example:
        websofttt tenant list --json
    """
    store = open_store(settings)
    emit([_tenant_json(store, t) for t in tenants.all_tenants(store)], as_json, _tenant_lines)


@tenant.command("show")
@click.argument("tenant_id")
@json_option
@with_settings
def tenant_show(settings, tenant_id, as_json) -> None:
    """Show one tenant.

    \b
    Example:
        websofttt tenant show acme
    """
    store = open_store(settings)
    emit(_tenant_json(store, tenants.require(store, tenant_id)), as_json, lambda d: _tenant_lines([d]))


@tenant.command("suspend")
@click.argument("tenant_id")
@click.option("--reason", required=True, help="Why (shown to the tenant in the SMTP reply).")
@with_settings
def tenant_suspend(settings, tenant_id, reason) -> None:
    """Stop a tenant from sending (MAIL FROM answers 550 5.7.1 with the reason).

    \b
    Example:
        websofttt tenant suspend acme --reason "spam complaints under review"
    """
    tenants.suspend(open_store(settings), tenant_id, reason)
    click.echo(f"suspended {tenant_id}")


@tenant.command("resume")
@click.argument("tenant_id")
@with_settings
def tenant_resume(settings, tenant_id) -> None:
    """Let a suspended tenant send again.

    \b
    Example:
        websofttt tenant resume acme
    """
    tenants.resume(open_store(settings), tenant_id)
    click.echo(f"resumed {tenant_id}")


@tenant.command("accept-terms")
@click.argument("tenant_id")
@with_settings
def tenant_accept_terms(settings, tenant_id) -> None:
    """Record that the tenant accepted the current terms version (provider.terms_version).

    \b
    Example:
        websofttt tenant accept-terms acme
    """
    tenants.accept_terms(open_store(settings), tenant_id, settings.provider.terms_version)
    click.echo(f"{tenant_id} accepted terms {settings.provider.terms_version}")


@cli.group("inbound")
def inbound_group() -> None:
    """The inbound side (what comes back to the role addresses).

    \b
    Example:
        websofttt inbound classify saved-reply.eml
    """


@inbound_group.command("classify")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@json_option
@with_settings
def inbound_classify(settings, files, as_json) -> None:
    """What the inbound listener would conclude about each FILE (a raw message); nothing is changed.

    \b
    Example:
        websofttt inbound classify reply.eml bounce.eml --json
    """
    store = open_store(settings)
    keys = TokenKeys.load(store, settings.tokens.secret_file)
    from inbound import offline as inbound_offline
    rows = [inbound_offline.describe(Path(f).read_bytes(), settings.provider, store, keys, f) for f in files]
    emit(rows, as_json, lambda items: [f"{r['file']}: {r['kind']} ({r['evidence']})"
                                       + (f" tenant={r['tenant']}" if r["tenant"] else "") for r in items])


for command in cli_records.COMMANDS:
    cli.add_command(command)


def main() -> None:
    """Entry point: user errors exit 2 with a message, operational failures exit 1, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except USER_ERRORS as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (sqlite3.Error, OSError, ServeError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
