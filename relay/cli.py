"""`websofttt`: the command line, and the composition root that wires every role.

Exit codes: 0 ok, 1 operational failure, 2 bad usage or configuration (the message names what).
Commands that show individual records take --reason and write an audit row first.
"""
from __future__ import annotations

import functools
import os
import sys
from contextlib import closing
from pathlib import Path

import click

from policy import dkimkeys
from policy.audit import ReasonRequired
from policy.keys import KeyMaterialError, check_tls_files, generate_dkim_key, generate_tls_cert
from policy.settings import ROLES, ConfigError, Settings
from policy.engines import is_set_up
from policy.store import StoreError
from policy.suppression import SuppressionError
from policy.tenants import TenantError
from policy.tokens import TokenError, TokenKeys, ensure_secret
from relay import cli_abuse, cli_dkim, cli_privacy, cli_records, cli_tenants, eventloop
from relay.cli_common import config_option, emit, json_option, migrated_store, with_settings
from relay.signing import provider_keys



def starters() -> dict:
    """The roles that live in inbound/, wired here (the composition root); imported only to serve."""
    from inbound import service
    from relay import scrape
    return {"inbound": service.start_inbound, "http": functools.partial(service.start_http, observers=scrape.observers)}


USER_ERRORS = (ConfigError, TokenError, TenantError, SuppressionError, ReasonRequired, KeyMaterialError,
               eventloop.LoopError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="websofttt-relay")
@config_option
def cli(config_path: str | None) -> None:
    """WebSoftTT Relay: multi-tenant SMTP relay and inbound mail processor.

    \b
    Example:
        websofttt init && websofttt serve
        websofttt --config /etc/websofttt/websofttt.toml tenant list
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
    if if_new and is_set_up(settings):
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = migrated_store(settings)
    secret_at = ensure_secret(store, settings.tokens.secret_file)
    dkim_at = dkimkeys.ensure_provider_key(store, settings)
    if settings.dkim.ed25519_key_file is not None:
        generate_dkim_key(settings.dkim.ed25519_key_file, ed25519_key=True)
    if settings.self_signed:
        generate_tls_cert(settings.tls_cert, settings.tls_key, settings.provider.hostname)
    check_tls_files(settings.tls_cert, settings.tls_key)
    click.echo(f"data dir:     {settings.data_dir}")
    click.echo(f"store:        {store.where}")
    click.echo(f"token secret: {secret_at}")
    click.echo(f"DKIM key:     {dkim_at}")
    click.echo(f"TLS:          {settings.tls_cert}{' (self-signed)' if settings.self_signed else ''}")
    click.echo("\nPublish these DNS records:")
    for line in cli_dkim.provider_zone(settings, store):
        click.echo(line)


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
    eventloop.name()          # WEBSOFTTT_LOOP checked here (exit 2), not in every worker it would crash
    check_tls_files(settings.tls_cert, settings.tls_key)
    with closing(migrated_store(settings)) as store:     # closed before the workers fork
        provider_keys(settings, store)
    prepare_metrics(settings)
    from relay import serve as serve_mod     # the servers' imports cost a second: only `serve` pays for them
    serve_mod.smarthost_auth(settings)
    serve_mod.setup_logging(settings)
    try:
        sys.exit(serve_mod.serve(settings, (role,) if role else ROLES, starters()))
    except serve_mod.ServeError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


def prepare_metrics(settings: Settings) -> None:
    """Point prometheus-client at data_dir/metrics, dropping the files of processes that are gone.

    Must run before prometheus-client is imported. Every `serve` on the node (one per role under
    systemd) writes there, so only files of dead processes are removed: their counts restart at 0,
    which Prometheus reads as a counter reset.
    """
    directory = settings.data_dir / "metrics"
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            path.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)



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
    store = migrated_store(settings)
    keys = TokenKeys.load(store, settings.tokens.secret_file)
    from inbound import offline as inbound_offline
    rows = [inbound_offline.describe(Path(f).read_bytes(), settings.provider, store, keys, f) for f in files]
    emit(rows, as_json, lambda items: [f"{r['file']}: {r['kind']} ({r['evidence']})"
                                       + (f" tenant={r['tenant']}" if r["tenant"] else "") for r in items])


for command in [*cli_records.COMMANDS, *cli_tenants.COMMANDS, *cli_abuse.COMMANDS, *cli_privacy.COMMANDS,
                *cli_dkim.COMMANDS]:
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
    except (*StoreError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
