"""`websofttt init` and `websofttt serve`: setting up this node and running its roles.

The composition root: `starters` wires in the roles that live in inbound/ (imported only to serve).
"""
from __future__ import annotations

import functools
import os
import sys
from contextlib import closing
from pathlib import Path

import click

from policy import dkimkeys, egress, tenants, terms
from policy.engines import is_set_up
from policy.keys import check_tls_files, generate_dkim_key, generate_tls_cert
from policy.settings import ROLES, ConfigError, Settings
from policy.tokens import ensure_secret
from relay import eventloop
from relay.cli.common import command_store, migrated_store, with_settings
from relay.cli.dkim import provider_zone
from relay.signing import provider_keys


def starters() -> dict:
    """The roles that live in inbound/, wired here (the composition root); imported only to serve. The http
    role mounts the tenant API, which submits through the worker's intake; inbound mail submits nothing."""
    from inbound import service
    from relay import api, scrape

    def inbound(settings, index, bind, intake):
        return service.start_inbound(settings, index, bind)

    def http(settings, index, bind, intake):
        return service.start_http(settings, index, bind, scrape.observers,
                                  functools.partial(api.apps, intake=intake))
    return {"inbound": inbound, "http": http}


@click.command()
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
    store = command_store(settings)          # opened only once the data dir exists (and only if --if-new lets it)
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
    for line in provider_zone(settings, store):
        click.echo(line)


@click.command()
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
        terms.seed(store, settings.provider.terms_version)   # a changed terms_version is refused: it needs notice
        unknown = sorted({t.pool for t in tenants.all_tenants(store) if t.pool}
                         - egress.pool_names(settings.egress.pools))
        if unknown:               # a pool removed from the configuration while tenants still use it
            users = [t.id for t in tenants.all_tenants(store) if t.pool == unknown[0]]
            raise ConfigError(f"{settings.source}: [egress.pools.{unknown[0]}] is not configured, but tenant(s) "
                              f"{', '.join(users)} send through it (websofttt tenant set ID --pool NAME)")
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


COMMANDS = [init, serve]
