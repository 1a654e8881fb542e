"""Token secret: the key under which per-recipient tokens are MAC-signed.

Made once by the first `init` and kept in the store (or in `[tokens] secret_file`), never replaced by
a later `init`; it carries a key id so a new key can be added while old tokens still verify.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path

from policy.keys import write_private
from policy.store import Store, utcnow

KEY_PREFIX = "token-key:"


def ensure_secret(store: Store, secret_file: Path | None) -> str:
    """Create the first token key if there is none; return where it lives."""
    if secret_file is not None:
        if not secret_file.exists():
            write_private(secret_file, base64.b64encode(os.urandom(32)) + b"\n")
        return str(secret_file)
    store.execute("INSERT INTO secrets (name, value, created) VALUES (?, ?, ?) ON CONFLICT(name) DO NOTHING",
                  [KEY_PREFIX + "1", base64.b64encode(os.urandom(32)).decode(), utcnow()])
    return f"{store.path} (secrets table)"
