"""`websofttt`: the command line, and the composition root that wires every role.

Exit codes: 0 ok, 1 operational failure, 2 bad usage or configuration (the message names what).
Commands that show individual records take --reason and write an audit row first.

One module per command group (its `COMMANDS` are registered below); `common` holds what they share.
Importing this package changes nothing outside it: `serve` prepares prometheus-client's directory itself.
"""
from __future__ import annotations

import sys

import click

from policy.audit import ReasonRequired
from policy.cases import CaseError
from policy.holds import HoldError
from policy.keys import KeyMaterialError
from policy.settings import ROLES, ConfigError
from policy.store import StoreError
from policy.suppression import SuppressionError
from policy.tenants import TenantError
from policy.terms import TermsError
from policy.tokens import TokenError
from relay import eventloop
from relay.cli import (abuse, apikeys, audit, credentials, dkim, dns, inbound, node, privacy, queue, shaping,
                       suppression, tenants, terms, tls_report, webhooks)
from relay.cli.common import config_option
from relay.cli.node import init, prepare_metrics, serve, starters

__all__ = ["ROLES", "USER_ERRORS", "cli", "init", "main", "prepare_metrics", "serve", "starters"]


USER_ERRORS = (ConfigError, TokenError, TenantError, SuppressionError, ReasonRequired, KeyMaterialError,
               HoldError, TermsError, CaseError, eventloop.LoopError)


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


for module in (node, inbound, credentials, apikeys, suppression, queue, shaping, tls_report, dns, audit, tenants, terms,
               webhooks, abuse, privacy, dkim):
    for command in module.COMMANDS:
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
