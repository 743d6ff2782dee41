"""Workstream files on disk: reading a source (a directory of TOML and JSON files, or one file, and
its agentrun.toml) safely — regular files only, bounded in size and nesting, UTF-8 — into
validated workstreams, its digest for a quick "unchanged" check, and the problems only the
project itself can show (a ``cwd`` that is a file)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

from agentrun.errors import SpecError
from agentrun.spec.values import shown, shown_path
from agentrun.spec.workstreams import CONFIG_FILE, MAX_FILE_BYTES, MAX_KEY_PARTS, Source, Workstream, parse_source


_NOT_REGULAR = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket",
                stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def _check_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise ValueError(f"not a regular file but {_NOT_REGULAR.get(stat.S_IFMT(mode), 'a special file')}; "
                         "workstream files and agentrun.toml are plain files")


def _read_regular(path: Path) -> bytes:
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
    data = _read_regular(path)
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


def source_files(path: Path) -> tuple[list[Path], Path]:
    """The workstream files of a source and its (possibly absent) config file; OSError if the
    source cannot be read. A directory lists only its regular files."""
    if stat.S_ISDIR(os.stat(path).st_mode):
        files = sorted(p for p in path.iterdir()
                       if p.suffix in (".toml", ".json") and p.name != CONFIG_FILE and p.is_file())
        return files, path / CONFIG_FILE
    return [path], path.parent / CONFIG_FILE


def source_digest(source: str | Path) -> str | None:
    """A hash of the source's bytes: unchanged files need not be parsed again (None if unreadable)."""
    digest = hashlib.sha256()
    try:
        files, config = source_files(Path(source))
        for file in files + ([config] if config.exists() else []):
            digest.update(file.name.encode() + b"\0" + _read_regular(file) + b"\0")
    except (OSError, ValueError):
        return None
    return digest.hexdigest()


def _unreadable(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read it ({exc.strerror or exc})"
    return str(exc)


def load_source(source: str | Path) -> Source:
    """Read a directory of workstream files (or one file) and validate it all."""
    path = Path(source)
    try:
        files, config_path = source_files(path)
        has_config = config_path.exists()
    except (FileNotFoundError, NotADirectoryError):
        raise SpecError([f"{shown_path(source)}: no such file or directory; pass the directory holding your "
                         "workstream files (default: waves/)"]) from None
    except OSError as exc:
        raise SpecError([f"{shown_path(source)}: {_unreadable(exc)}"]) from None
    problems: list[str] = []
    docs: list[tuple[str, Any]] = []
    for file in files:
        try:
            docs.append((str(file), read_document(file)))
        except (ValueError, OSError) as exc:
            problems.append(f"{shown_path(file)}: {_unreadable(exc)}")
    config: dict[str, Any] = {}
    if has_config:
        try:
            config = read_document(config_path)
        except (ValueError, OSError) as exc:
            problems.append(f"{shown_path(config_path)}: {_unreadable(exc)}")
    if not files and not problems:
        problems.append(f"{shown_path(source)}: no workstream files (*.toml, *.json) found")
    try:
        workstreams, settings = parse_source(docs, config, str(config_path))
    except SpecError as exc:
        problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return Source(str(path), workstreams, settings, [str(f) for f in files])


def project_problems(workstreams: list[Workstream], root: Path) -> list[str]:
    """What only the project itself can show to be wrong: a ``cwd`` naming a file (or a path under
    one). A ``cwd`` that does not exist yet is fine: a dependency's result may contain it."""
    problems: list[str] = []
    for ws in workstreams:
        if ws.cwd is None:
            continue
        here = root
        for part in PurePosixPath(ws.cwd).parts:
            here = here / part
            try:
                mode = os.stat(here).st_mode
            except OSError:
                break
            if not stat.S_ISDIR(mode):
                problems.append(f"{shown_path(ws.source)}: workstream '{ws.id}': field 'cwd': {shown(ws.cwd)} is "
                                f"a file in {shown_path(root)}, not a directory; name the directory to run in")
                break
    return problems
