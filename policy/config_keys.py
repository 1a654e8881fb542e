"""Configuration keys, declared once: a key is a field of a section dataclass (policy/settings.py) made with
`key(parser, default)`; the loader's tables (sections, parsers, path keys) are derived from those fields."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, Field, field, fields, is_dataclass
from typing import Any, TypeVar, overload

T = TypeVar("T")
Parser = Callable[[Any], Any]       # raw TOML value -> typed value, or ValueError(what is expected)


@overload
def key(parse: Parser, default: T, *, path: bool = False) -> T: ...
@overload
def key(parse: Parser, *, factory: Callable[[], T]) -> T: ...
def key(parse: Parser, default: Any = MISSING, *, factory: Any = MISSING, path: bool = False) -> Any:
    """A configuration key: its parser (policy/values.py) and default (`factory` for a mutable one).
    `path=True`: a relative value is resolved against the configuration file's directory, "" is None."""
    metadata = {"parse": parse, "path": path}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def sections(settings: type) -> dict[str, type]:
    """Section name -> its dataclass: the fields of `settings` whose default is a section, in their order."""
    return {f.name: type(f.default) for f in fields(settings) if is_dataclass(f.default)}


def _keys(section: type) -> list[Field[Any]]:
    return [f for f in fields(section) if "parse" in f.metadata]


def schema(classes: dict[str, type]) -> dict[str, dict[str, Parser]]:
    """Section -> key -> parser, in declaration order (the order error messages list them in)."""
    return {name: {f.name: f.metadata["parse"] for f in _keys(cls)} for name, cls in classes.items()}


def path_keys(classes: dict[str, type]) -> frozenset[tuple[str, str]]:
    """(section, key) of the keys declared with `path=True`."""
    return frozenset((name, f.name) for name, cls in classes.items() for f in _keys(cls) if f.metadata["path"])
