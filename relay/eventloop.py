"""The event loop every worker runs: uvloop by default, asyncio's own where asked or uvloop is missing.

`WEBSOFTTT_LOOP=asyncio|uvloop` chooses (the test suite runs on both); anything else is refused, so a
typo never silently measures the wrong loop.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("uvloop", "asyncio")


class LoopError(Exception):
    """WEBSOFTTT_LOOP names no loop this machine has."""


def name() -> str:
    """The loop chosen by WEBSOFTTT_LOOP (default uvloop, asyncio when uvloop is not installed)."""
    wanted = os.environ.get("WEBSOFTTT_LOOP", "")
    if wanted and wanted not in CHOICES:
        raise LoopError(f"WEBSOFTTT_LOOP={wanted!r}: expected one of {', '.join(CHOICES)}")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise LoopError("WEBSOFTTT_LOOP=uvloop but uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the chosen loop."""
    factory = None
    if name() == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
