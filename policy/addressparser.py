"""flanker's address parser, imported so that building it writes nothing: no file and no line on stderr.

Importing `flanker.addresslib` builds five PLY parsers (flanker/addresslib/_parser/parser.py calls
`ply.yacc.yacc(start=..., tabmodule=..., errorlog=log)`, `log` being that module's logger). When their table
modules are not beside flanker, as after a pip install and at every start under systemd, where
site-packages is read-only, PLY rebuilds the tables, logs ~28 grammar warnings ("Symbol 'delim' is
unreachable": one grammar serves five start symbols) and tries to write the tables into site-packages. The
import comes before `logs.setup`, so Python's last-resort handler printed them as plain text among the
JSON lines.

So for the import, `yacc` gets `write_tables=False` (tables already there are still read; missing ones are
built in memory, ~0.2 s, and site-packages is never written, whether it is writable or not) and flanker's
parser logger drops every record (the warnings are about flanker's grammar, nothing an operator can act on;
a grammar PLY cannot build still raises YaccError). The default is bound with functools.partial, which adds
no Python frame: PLY reads the grammar from the globals of the frame that calls `yacc`, which must stay
flanker's. This relies on flanker building its parsers through `ply.yacc.yacc` at import, with that
logger, and on PLY 3's `write_tables` (PLY 4 has none): pyproject.toml bounds both. Import flanker's address
module from here only; an import of it elsewhere that ran first would build the parsers the noisy way.
"""
from __future__ import annotations

import functools
import logging
from types import ModuleType

import ply.yacc


def _drop(record: logging.LogRecord) -> bool:
    return False


def _import_address() -> ModuleType:
    build = ply.yacc.yacc
    grammar_log = logging.getLogger("flanker.addresslib._parser.parser")
    ply.yacc.yacc = functools.partial(build, write_tables=False)
    grammar_log.addFilter(_drop)
    try:
        from flanker.addresslib import address as module
    finally:
        ply.yacc.yacc = build
        grammar_log.removeFilter(_drop)
    return module


address = _import_address()
EmailAddress = address.EmailAddress
