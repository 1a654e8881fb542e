"""Audit log: every view of an individual record, with who, when and why."""
from __future__ import annotations

import getpass
import os

from policy.store import Store, utcnow


class ReasonRequired(Exception):
    """Individual records are shown only to resolve a problem, and the reason is recorded."""


def os_user() -> str:
    """Who runs the command: the audit row's and a case step's author."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def record(store: Store, command: str, shown: str, reason: str | None) -> None:
    """Write the audit row before anything is shown; refuse without a reason."""
    if not reason or not reason.strip():
        raise ReasonRequired(f"'{command}' shows individual records: give --reason TEXT (it is audit-logged)")
    store.insert("audit", {"time": utcnow(), "os_user": os_user(), "command": command, "shown": shown,
                              "reason": reason.strip()})


def entries(store: Store) -> list[dict]:
    return store.all("SELECT time, os_user, command, shown, reason FROM audit ORDER BY id")
