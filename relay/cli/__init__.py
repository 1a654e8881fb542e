"""`websofttt`: the command line, and the composition root that wires every role.

Exit codes: 0 ok, 1 operational failure, 2 bad usage or configuration (the message names what).
Commands that show individual records take --reason and write an audit row first.

One module per command group (its `COMMANDS`, named in COMMAND_MODULES below); `common` holds what they share.
A command's module is imported when the command runs (or `--help` lists it), so that `websofttt audit list`
does not load the serving roles, the delivery path and aiohttp: half of a short command's time went there.
Importing this package changes nothing outside it: `serve` prepares prometheus-client's directory itself.
"""
from __future__ import annotations

import importlib
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
from relay.cli.common import config_option

__all__ = ["COMMAND_MODULES", "ROLES", "USER_ERRORS", "cli", "main"]


USER_ERRORS = (ConfigError, TokenError, TenantError, SuppressionError, ReasonRequired, KeyMaterialError,
               HoldError, TermsError, CaseError, eventloop.LoopError)

# command -> the module of relay/cli/ whose COMMANDS define it (tests/test_cli.py checks both agree)
COMMAND_MODULES = {"init": "node", "serve": "node", "inbound": "inbound", "credential": "credentials",
                   "apikey": "apikeys", "suppression": "suppression", "queue": "queue", "shaping": "shaping",
                   "tls-report": "tls_report", "dns": "dns", "audit": "audit", "tenant": "tenants", "terms": "terms",
                   "webhook": "webhooks", "complaint": "abuse", "case": "abuse", "stats": "privacy",
                   "privacy": "privacy", "dkim": "dkim"}


class LazyGroup(click.Group):
    """The top-level group: each command is loaded from its module when it is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMAND_MODULES and cmd_name not in self.commands:
            for command in importlib.import_module(f"relay.cli.{COMMAND_MODULES[cmd_name]}").COMMANDS:
                self.add_command(command)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="websofttt-relay")
@config_option
def cli(config_path: str | None) -> None:
    """WebSoftTT Relay: multi-tenant SMTP relay and inbound mail processor.

    \b
    Example:
        websofttt init && websofttt serve
        websofttt --config /etc/websofttt/websofttt.toml tenant list
    """


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
