"""Checks of values the user wrote (workstream files, agentrun.toml), shared by every module that reads
them: how a value is quoted in a message, numbers within a range, text a process can carry. Pure core."""

from __future__ import annotations

import re
import reprlib
from typing import Any

SHOWN_CHARS = 110           # a value quoted in a message: a valid id (100 characters) in full
SHOWN_PATH_CHARS = 200      # a file name at the head of a message
SHOWN_NAMES_CHARS = 500     # a list of known names ("known fields: ...")
MAX_LINE_CHARS = 1024       # names, paths, patterns, tags: one-line values

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = _SHOWN.maxlong = SHOWN_CHARS
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4
_SHOWN.maxlevel = 2
_PATH = reprlib.Repr()
_PATH.maxstring = SHOWN_PATH_CHARS
# What str.splitlines() splits at, and the other C0/C1 controls but tab: never inside a one-line value.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def shown(value: Any) -> str:
    """A value the user wrote, as a message quotes it: like repr, so control characters and lone
    surrogates are escaped and the message stays one line; long values are cut in the middle
    ('abc...xyz'), so it stays short."""
    return _SHOWN.repr(value)


def shown_path(name: Any) -> str:
    """A file name at the head of a message: escaped and shortened like ``shown``, unquoted."""
    return _PATH.repr(str(name))[1:-1]


def shown_names(names: Any) -> str:
    """Known names for a hint, sorted and escaped; cut short with a count when there are many."""
    ordered = sorted(names)
    parts: list[str] = []
    used = 0
    for name in ordered:
        part = shown(name)[1:-1]
        if used + len(part) > SHOWN_NAMES_CHARS and parts:
            return ", ".join(parts) + f", ... ({len(ordered):,} in all)"
        parts.append(part)
        used += len(part) + 2
    return ", ".join(parts)


def type_name(v: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


def whole_number(v: Any, low: int, high: int) -> int:
    """``v`` if it is an integer from ``low`` to ``high``; ValueError saying the range otherwise."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected a whole number from {low:,} to {high:,}, got {shown(v)}")
    if not low <= v <= high:
        raise ValueError(f"{shown(v)} is out of range; use a whole number from {low:,} to {high:,}")
    return v


def number(v: Any, low: float, high: float) -> float:
    """``v`` as a float if it is a number from ``low`` to ``high`` (so never NaN or infinite)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number from {low:,} to {high:,}, got {shown(v)}")
    if not low <= v <= high:
        raise ValueError(f"{shown(v)} is out of range; use a number from {low:,} to {high:,}")
    return float(v)


def text(v: Any, max_len: int = MAX_LINE_CHARS, *, one_line: bool = True, in_bytes: bool = False) -> str:
    """``v`` if it is a string a file name, an argument or an environment can carry: no NUL, valid
    Unicode (JSON can write a lone surrogate such as "\\ud800"), at most ``max_len`` characters
    (or UTF-8 bytes, for what becomes a process's arguments and environment, which Linux limits in
    bytes), and with ``one_line`` no line breaks or other control characters (a tab is fine)."""
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type_name(v)}")
    if "\0" in v:
        raise ValueError(f"{shown(v)} contains a NUL character, which no argument, environment or file "
                         "name can carry; remove it")
    try:
        encoded = v.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{shown(v)} is not valid Unicode (it holds a lone surrogate); write the character "
                         "itself, or remove it") from None
    size = len(encoded) if in_bytes else len(v)
    if size > max_len:
        unit = "bytes" if in_bytes else "characters"
        raise ValueError(f"{shown(v)} is {size:,} {unit} long; at most {max_len:,} {unit}")
    if one_line and _CONTROL.search(v):
        raise ValueError(f"{shown(v)} must be one line, without line breaks or control characters")
    return v
