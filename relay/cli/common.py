"""Helpers shared by the command modules: --config loading, the store of one invocation, JSON output."""
from __future__ import annotations

import functools
import json
from contextlib import closing

import click

from policy.settings import Settings, find_config, load_settings
from policy.engines import open_store
from policy.store import Store


CONFIG_HELP = "Configuration file (default: $WEBSOFTTT_CONFIG, then ./websofttt.toml, then defaults)."


def config_option(f):
    """--config, on the top-level command and on each command that reads the settings."""
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help=CONFIG_HELP)(f)


def with_settings(f):
    """Adds --config to a command and passes the loaded Settings as its first argument. The option may
    also come before the command (`websofttt --config X tenant list`); given in both places, the one
    after the command wins."""
    @config_option
    @functools.wraps(f)
    def wrapper(config_path, **kwargs):
        path, _ = find_config(config_path or click.get_current_context().find_root().params.get("config_path"))
        return f(load_settings(path), **kwargs)
    return wrapper


def with_store(f):
    """Passes the migrated store, opened once for this invocation, as the second argument (after the settings);
    it is closed with the click context, once the command has returned or failed. Goes below @with_settings:

        @with_settings
        @with_store
        def tenant_list(settings, store, as_json): ...

    A command that must check something before the store is opened calls `command_store(settings)` there."""
    @functools.wraps(f)
    def wrapper(settings, **kwargs):
        return f(settings, command_store(settings), **kwargs)
    return wrapper


def command_store(settings: Settings) -> Store:
    """The migrated store, closed with the current click context (the command's invocation)."""
    return click.get_current_context().with_resource(closing(migrated_store(settings)))


def migrated_store(settings: Settings) -> Store:
    """The store, migrated; the caller closes it (most commands take it from @with_store instead)."""
    store = open_store(settings)
    store.migrate()
    return store


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON).")(f)


def reason_option(f):
    return click.option("--reason", default=None, help="Why you need to see individual records (audit-logged).")(f)


def emit(data, as_json: bool, human) -> None:
    """Print `data` as JSON or through `human(data)`, which returns the lines."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in human(data):
            click.echo(line)
