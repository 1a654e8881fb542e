"""systemd's readiness protocol (sd_notify(3)): a datagram to $NOTIFY_SOCKET, nothing when it is unset.

Written out rather than a dependency: it is one datagram, and the units run `Type=notify` with
`NotifyAccess=main`, so only the supervising `serve` process sends.
"""
from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send e.g. "READY=1"; True if systemd was told."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path     # '@': an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode("ascii"))
    return True
