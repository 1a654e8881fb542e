"""Queue ids: what the relay answers `250 2.0.0 Queued as ID` with, and what every log line and record names.

Made here, in the core, because provider mail (policy/outbox.py) gets its id when it is written, so a notice
can be recorded with it before the delivery role spools it.
"""
from __future__ import annotations

import base64
import os
import time


def new_queue_id(node: str) -> str:
    """Unique across nodes, and sorted as strings in the order they were made: 48-bit milliseconds + 40
    random bits in base32hex (0-9a-v, in ASCII order; base32's a-z2-7 is not), then the node name."""
    raw = int(time.time() * 1000).to_bytes(6, "big") + os.urandom(5)
    return base64.b32hexencode(raw).decode().rstrip("=").lower() + "." + node
