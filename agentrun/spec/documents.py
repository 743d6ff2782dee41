"""Reading one workstream file or agentrun.toml: a regular file of bounded size, UTF-8, TOML or JSON.

Guards come before the parser: FIFOs and devices are refused from their stat, sizes are capped, and
TOML keys nested deeper than tomllib reads in reasonable time are refused.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from agentrun.spec.values import shown

MAX_FILE_BYTES = 10 * 1024 * 1024      # one workstream file or agentrun.toml
MAX_KEY_PARTS = 64                     # a TOML key or table header: tomllib's time grows with its square


_NOT_REGULAR = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket",
                stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def _check_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise ValueError(f"not a regular file but {_NOT_REGULAR.get(stat.S_IFMT(mode), 'a special file')}; "
                         "workstream files and agentrun.toml are plain files")


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES. Anything else is refused from its stat,
    before it is opened: reading a FIFO waits for a writer forever, and a device may never end."""
    _check_regular(os.stat(path).st_mode)
    # Should the file have been swapped for a FIFO since the stat, a non-blocking open still returns.
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY), "rb") as fh:
        _check_regular(os.fstat(fh.fileno()).st_mode)
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES:,} bytes; split it into several files")
    return data


# TOML strings and comments, whole (an unclosed one to the end of its line, or of the file for a
# multi-line string): what looks like a key in them is none. Possessive, so any text is scanned in linear time.
_TOML_STRINGS = re.compile(r'"""(?:[^"\\]|\\.|""?(?!"))*+(?:"{3,5}|\Z)'
                           r"|'''(?:[^']|''?(?!'))*+(?:'{3,5}|\Z)"
                           r'|"(?:[^"\\\n]|\\.)*+"?'
                           r"|'[^'\n]*+'?"
                           r"|#[^\n]*+", re.S)
# Outside strings and comments, dots appear in keys and in numbers, one per number, and nothing but a key
# puts several between two of =, a bracket, a brace, a comma and a line break. Anchored after one of them
# (or at the start), each character is looked at once.
_KEY_END = r"=,\[\]{}\n"
_DEEP_KEY = re.compile(rf"(?<![^{_KEY_END}])[^.{_KEY_END}]*+(?:\.[^.{_KEY_END}]*+){{{MAX_KEY_PARTS}}}")


def _check_key_depth(content: str) -> None:
    """Refuse a TOML key or table header of more than MAX_KEY_PARTS dotted parts before tomllib reads it."""
    if content.count(".") < MAX_KEY_PARTS:
        return
    blanked = _TOML_STRINGS.sub(lambda string: "s" + "\n" * string[0].count("\n"), content)  # lines kept
    if found := _DEEP_KEY.search(blanked):
        line = blanked.count("\n", 0, found.start()) + 1
        written = content.split("\n")[line - 1]
        raise ValueError(f"line {line}: a key or table header of more than {MAX_KEY_PARTS} dotted parts "
                         f"({shown(written)}); nest tables at most {MAX_KEY_PARTS} deep")


def read_document(path: Path) -> Any:
    """Parse one TOML or JSON file; ValueError carries a user-facing message."""
    data = read_regular(path)
    try:
        # Universal newlines, as reading in text mode gives: the hash of a definition does not
        # depend on how the file ends its lines.
        content = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start:,}); "
                         "save it as UTF-8") from None
    kind = "JSON" if path.suffix == ".json" else "TOML"
    if kind == "TOML":
        _check_key_depth(content)
    try:
        return json.loads(content) if kind == "JSON" else tomllib.loads(content)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"invalid TOML: {exc}") from None
    except RecursionError:
        raise ValueError(f"invalid {kind}: nested too deeply to read; a workstream file needs a few levels "
                         "of tables and lists at most") from None
    except ValueError as exc:  # an integer longer than Python converts; the rest says how to raise that limit
        raise ValueError(f"invalid {kind}: {str(exc).split(';')[0]}") from None
