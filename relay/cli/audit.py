"""`websofttt audit list`: who viewed which individual records, when and why."""
from __future__ import annotations

import click

from policy import audit
from relay.cli.common import emit, json_option, with_settings, with_store


@click.command("audit")
@click.argument("action", type=click.Choice(["list"]))
@json_option
@with_settings
@with_store
def audit_cmd(settings, store, action, as_json) -> None:
    """Who viewed which individual records, when and why.

    \b
    Example:
        websofttt audit list --json
    """
    emit(audit.entries(store), as_json,
         lambda rows: [f"{r['time']} {r['os_user']:<12} {r['command']:<18} {r['shown']:<30} {r['reason']}"
                       for r in rows])


COMMANDS = [audit_cmd]
