"""One parameter: its default and help text, and checking and coercing a given value.

Every error a user can cause with a parameter is a :class:`ConfigError` with one sentence naming
the key and what would be valid.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """Bad parameters: the message is one sentence naming the key and what is valid."""


HASHED = object()   # a parameter's ``unhashed_at`` when every value of it is hashed


def param(default: Any, help: str, *, unhashed_at: Any = HASHED, hashed_for_every_head: bool = False) -> Any:
    """A dataclass field carrying its one-line help text, and how the cell hash treats it.

    ``unhashed_at``: a parameter added after cell ids were in use stays out of the hash at the value that
    computes what was computed before it existed, so adding it renames (orphans) no cell folder.
    ``hashed_for_every_head``: a head's parameter that is hashed for the other heads' cells too (at its
    value), as it was when every parameter was shared; a head's newer parameters are hashed for its own
    cells only, so changing one renames no cell of another head (docs/design.md, "Cell ids").
    """
    if isinstance(default, (list, dict)):
        raise TypeError("mutable defaults are not allowed")
    return field(default=default, metadata={"help": help, "unhashed_at": unhashed_at,
                                            "hashed_for_every_head": hashed_for_every_head})


def at_unhashed_value(f: Any, value: Any) -> bool:
    """Whether a parameter (its dataclass field ``f``) is at the value its ``unhashed_at`` leaves out of the
    cell hash: what was computed before it existed."""
    return f.metadata.get("unhashed_at", HASHED) is not HASHED and value == f.metadata["unhashed_at"]


def did_you_mean(name: str, names: Any) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def where_suffix(where: str) -> str:
    return f" (in {where})" if where else ""


def require(ok: bool, key: str, value: Any, valid: str) -> None:
    if not ok:
        raise ConfigError(f"parameter '{key}' must be {valid}, got {value!r}")


_HINTS: dict[type, dict[str, Any]] = {}


def type_hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if typing.get_origin(hint) is tuple:
        return f"a list of {len(args)} numbers"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[hint]


# PyYAML follows YAML 1.1, which reads exponent notation without a dot (1e-3) as text.
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def coerce(name: str, value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the field's type hint; ints, and text such as 1e-3, are accepted for floats."""
    args = typing.get_args(hint)
    if isinstance(value, str) and float in (hint, *args) and _EXPONENT.fullmatch(value.strip()):
        value = float(value)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(name, value, inner[0], where) if _fits(value, inner[0]) else _bad_type(name, value, hint, where)
    if not _fits(value, hint):
        _bad_type(name, value, hint, where)
    if typing.get_origin(hint) is tuple:
        if not all(math.isfinite(v) for v in value):
            _not_finite(name, value, where)
        return tuple(float(v) for v in value)
    if hint is float and not math.isfinite(value):
        _not_finite(name, value, where)
    return float(value) if hint is float else value


def _not_finite(name: str, value: Any, where: str) -> typing.NoReturn:
    """Infinity and NaN (``.inf`` or ``1e999`` in a file) are refused as on ``--set``, before training."""
    raise ConfigError(f"parameter '{name}' must be a finite number, got {value!r}{where_suffix(where)}")


def _fits(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(_fits(v, float) for v in value)
    raise TypeError(f"unsupported type hint {hint!r}")


def _bad_type(name: str, value: Any, hint: Any, where: str) -> typing.NoReturn:
    raise ConfigError(f"parameter '{name}' must be {_type_name(hint)}, got {value!r}{where_suffix(where)}")
