"""Bulk import of suppressions: a customer's opt-out export, another provider's bounce list.

Input: one address per line, or CSV (comma, semicolon or tab) whose address is the column named
email / e-mail / address / email_address, else the first column; a header row is recognised by having
no address in it. Blank lines and lines starting with '#' are skipped. Invalid lines are counted and
reported with their line numbers, never imported. Existing entries keep their cause (as `add`).

Fast enough for millions: syntax by one regular expression (a full RFC 5322 parse costs more than the
insert), and batches of BATCH rows per transaction, each a single executemany of an upsert.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from policy.store import Store, utcnow
from policy.suppression import CAUSES, SuppressionError

BATCH = 20_000
MAX_REPORTED = 50
_ADDRESS = re.compile(r"[^@\s<>()\[\],;:\"\\]{1,64}@(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                      r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+")
_COLUMNS = ("email", "e-mail", "address", "email_address", "emailaddress", "mail")


@dataclass
class ImportResult:
    added: int = 0
    present: int = 0
    invalid: int = 0
    invalid_lines: list[tuple[int, str]] = field(default_factory=list)    # the first MAX_REPORTED

    def as_json(self) -> dict:
        return {"added": self.added, "already_present": self.present, "invalid": self.invalid,
                "invalid_lines": [{"line": n, "text": t} for n, t in self.invalid_lines]}


def import_lines(store: Store, lines: Iterable[str], scope: str, cause: str, source: str,
                 progress: Callable[[int], None] | None = None) -> ImportResult:
    """Suppress every valid address in `lines` for `scope`; `progress` gets the characters consumed."""
    if cause not in CAUSES:
        raise SuppressionError(f"cause {cause!r} must be one of: {', '.join(CAUSES)}")
    result, batch, now = ImportResult(), [], utcnow()
    for number, address, raw in _addresses(lines, progress):
        if address is None:
            result.invalid += 1
            if len(result.invalid_lines) < MAX_REPORTED:
                result.invalid_lines.append((number, raw.strip()[:80]))
            continue
        batch.append((address, scope, cause, source, now))
        if len(batch) >= BATCH:
            _write(store, batch, result)
    _write(store, batch, result)
    return result


def _write(store: Store, batch: list[tuple], result: ImportResult) -> None:
    if not batch:
        return
    with store.exclusive():
        added = store.executemany("INSERT INTO suppressions (address, scope, cause, source, created) "
                                 "VALUES (?, ?, ?, ?, ?) ON CONFLICT(address, scope) DO NOTHING", batch)
    result.added += added
    result.present += len(batch) - added
    batch.clear()


def _addresses(lines: Iterable[str], progress: Callable[[int], None] | None) -> Iterator[tuple[int, str | None, str]]:
    """(line number, normalised address or None when invalid, the raw line) for each data line."""
    column: int | None = None
    delimiter: str | None = None
    for number, raw in enumerate(lines, 1):
        if progress:
            progress(len(raw))
        line = raw.strip().lstrip("\ufeff")
        if not line or line.startswith("#"):
            continue
        if delimiter is None:
            delimiter = next((d for d in (",", ";", "\t") if d in line), "")
        fields = next(csv.reader([line], delimiter=delimiter)) if delimiter else [line]
        if column is None:
            column = 0
            lowered = [f.strip().lower() for f in fields]
            if not any("@" in f for f in lowered):                    # a header row
                column = next((lowered.index(c) for c in _COLUMNS if c in lowered), 0)
                continue
        value = fields[column].strip().strip("<>").lower() if column < len(fields) else ""
        yield number, (value if _ADDRESS.fullmatch(value) else None), raw
