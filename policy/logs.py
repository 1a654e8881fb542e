"""Logs: one JSON object per line on stderr (journald keeps them), from our code and the libraries alike.

`event(kind, ...)` is the one function for mail events (received, rejected, queued, attempt, delivered,
deferred, bounced, suppressed, complaint, unsubscribe, auth_failure): one JSON line with the queue id and
the tenant. Callers never pass passwords or message content; recipient addresses are masked unless
`privacy.mask_recipients = false`; and tokens (credentials to a recipient's opt-out, also inside VERP
addresses and one-click links) are cut out of every line, whoever logged it.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time

from policy.addresses import mask

_TOKEN = re.compile(r"\b(unsubscribe|bounce)\+[A-Za-z2-7]{8,64}|(/u/)[A-Za-z2-7]{8,64}")
_events = logging.getLogger("websofttt.events")
_masked = True


def _untokened(text: str) -> str:
    if "+" not in text and "/u/" not in text:
        return text                      # most lines: the scan for a token costs more than the rest of the line
    return _TOKEN.sub(lambda m: f"{m.group(1)}+…" if m.group(1) else "/u/…", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "process": record.processName,
                 "message": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _untokened(json.dumps(entry, default=str, ensure_ascii=False))


def setup(mask_recipients: bool = True, stream=None) -> None:
    """Route every logger (ours, aiosmtpd, asyncio, aiohttp, warnings) through one JSON handler."""
    global _masked
    _masked = mask_recipients
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # the lines carry no source file, line or thread: skip their lookup per record (logging HOWTO, Optimization)
    logging._srcfile = None
    logging.logThreads = False
    logging.getLogger("mail.log").setLevel(logging.WARNING)   # aiosmtpd logs every command, with addresses
    logging.captureWarnings(True)
    # what Python itself would print to stderr as plain text goes through the same handler
    uncaught = logging.getLogger("websofttt.uncaught")
    sys.excepthook = lambda kind, value, tb: uncaught.critical("uncaught exception", exc_info=(kind, value, tb))
    threading.excepthook = lambda a: uncaught.error("exception in thread %s", getattr(a.thread, "name", "?"),
                                                    exc_info=a.exc_value)
    sys.unraisablehook = lambda u: uncaught.warning("%s: %r", u.err_msg or "Exception ignored in", u.object,
                                                    exc_info=u.exc_value)


def event(kind: str, /, *, queue_id: str | None = None, tenant: str | None = None, recipient: str | None = None,
          **fields: object) -> None:
    """Log one mail event as one JSON line; None-valued fields are left out."""
    data: dict[str, object] = {"event": kind, "queue_id": queue_id, "tenant": tenant,
                               "recipient": (mask(recipient) if _masked else recipient) if recipient else None}
    data.update(fields)
    _events.info(kind, extra={"fields": {k: v for k, v in data.items() if v is not None}})
