"""The fields a workstream may set: their allowed values and limits, one checker each, and ``FIELDS``.

Each checker returns the normalised value or raises ``ValueError`` with a user-facing message.
"""

from __future__ import annotations

import difflib
import re
from pathlib import PurePosixPath
from typing import Any, Callable

from agentrun.spec import globs
from agentrun.spec.command import Command
from agentrun.spec.durations import parse_duration
from agentrun.spec.models import EDIT_FORMATS
from agentrun.spec.values import number, shown, text, type_name as _tname, whole_number

TYPES = ("unit_test", "refactor", "docs", "codegen", "fix", "other")
PRIORITIES = ("critical", "high", "normal", "low")
COMPLEXITIES = ("simple", "moderate", "complex")
ISOLATIONS = ("auto", "worktree", "none")
SCOPES = ("fail", "warn", "off")
ON_CONFLICT = ("fail", "retry")
MERGE_STRATEGIES = ("rebase", "merge")
AGENTS = ("llm",)
BUDGET_MODES = ("warn", "soft", "hard")

# Ranges and sizes. Strings that become a process's arguments or environment are measured in UTF-8
# bytes, well inside Linux's limits (128 KiB per string, about 2 MB for arguments and environment
# together); the rest in characters.
MAX_RETRIES = 100
MAX_REPAIRS = 20
MAX_TOKENS = 100_000_000
MAX_COST_USD = 1_000_000
MAX_RETRY_BACKOFF = 86400.0            # 1 day
MAX_TITLE_CHARS = 500
MAX_DESCRIPTION_CHARS = 100_000
MAX_COMMAND_BYTES = 64 * 1024          # a shell command, or an argv list in all
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_ENV_BYTES = 256 * 1024             # a workstream's env, names and values, [defaults] included
MAX_LIST_ITEMS = 10_000
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HINT_CHARS = 200                       # longer names are no typo of a known one: no did-you-mean


def _str(v: Any) -> str:
    return text(v)


def _title(v: Any) -> str:
    return text(v, MAX_TITLE_CHARS)


def _description(v: Any) -> str:
    return text(v, MAX_DESCRIPTION_CHARS, one_line=False)


def nonblank_name(v: Any) -> str:
    if not text(v).strip():
        raise ValueError(f"{shown(v)} is blank; give a name, or leave the field out")
    return v


def choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"expected a string, got {_tname(v)}")
        if v not in options:
            hint = difflib.get_close_matches(v, options, n=1) if len(v) <= HINT_CHARS else []
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(f"{shown(v)} is not one of {', '.join(options)}{extra}")
        return v
    return check


def _list_of(item: Callable[[Any], str]) -> Callable[[Any], tuple[str, ...]]:
    def check(v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            raise ValueError("expected a list of strings, got a string; write it as [\"...\"]")
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise ValueError("expected a list of non-empty strings")
        if len(v) > MAX_LIST_ITEMS:
            raise ValueError(f"{len(v):,} items; at most {MAX_LIST_ITEMS:,}")
        return tuple(item(x) for x in v)
    return check


def _duration(v: Any) -> float:
    return parse_duration(v)


def _backoff(v: Any) -> float:
    return parse_duration(v, MAX_RETRY_BACKOFF)


def _opt_duration(v: Any) -> float | None:
    seconds = parse_duration(v)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def _whole(high: int) -> Callable[[Any], int]:
    return lambda v: whole_number(v, 0, high)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {shown(v)}")
    return v


def _env(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ValueError(f"expected a table of NAME = \"value\", got {_tname(v)}")
    for key, val in v.items():
        if not ENV_NAME_RE.fullmatch(key):
            raise ValueError(f"{shown(key)} is not a valid environment variable name")
        if not isinstance(val, str):
            raise ValueError(f"value of {key} must be a string, got {_tname(val)}")
        try:
            text(val, MAX_ENV_VALUE_BYTES, one_line=False, in_bytes=True)
        except ValueError as exc:
            raise ValueError(f"value of {key}: {exc}") from None
    env_size(v)
    return dict(v)


def env_size(env: dict[str, str]) -> None:
    size = sum(len(k) + len(v.encode()) + 2 for k, v in env.items())  # NAME=value and its NUL
    if size > MAX_ENV_BYTES:
        raise ValueError(f"{size:,} bytes of names and values in all; at most {MAX_ENV_BYTES:,} bytes")


def _env_name(v: Any) -> str:
    if not ENV_NAME_RE.fullmatch(text(v)):
        raise ValueError(f"{shown(v)} is not a valid environment variable name; write the name of the "
                         "variable, such as \"OPENROUTER_API_KEY\"")
    return v


def _command(v: Any) -> Command:
    if isinstance(v, str):
        text(v, MAX_COMMAND_BYTES, one_line=False, in_bytes=True)
        if not v.strip():
            raise ValueError("the command is empty")
        return Command(shell=v)
    if isinstance(v, list):
        if not v or not all(isinstance(x, str) for x in v) or not v[0]:
            raise ValueError("an argv list must be non-empty strings, e.g. [\"pytest\", \"-q\"]")
        for arg in v:
            text(arg, MAX_COMMAND_BYTES, one_line=False, in_bytes=True)
        size = sum(len(arg.encode()) + 1 for arg in v)
        if size > MAX_COMMAND_BYTES:
            raise ValueError(f"the argv list is {size:,} bytes in all; at most {MAX_COMMAND_BYTES:,} bytes")
        return Command(argv=tuple(v))
    if isinstance(v, dict):
        unknown = set(v) - {"name", "run"}
        if unknown or "run" not in v:
            raise ValueError("a command table takes exactly: run (required), name")
        if isinstance(v["run"], dict):
            raise ValueError("a command table's run is a command string or an argv list, not another table")
        inner = _command(v["run"])
        name = v.get("name", "")
        if not isinstance(name, str):
            raise ValueError("a command's name must be a string")
        return Command(argv=inner.argv, shell=inner.shell, name=text(name))
    raise ValueError(f"expected a command string or an argv list, got {_tname(v)}")


def commands(v: Any) -> tuple[Command, ...]:
    if isinstance(v, (str, dict)):
        return (_command(v),)
    if not isinstance(v, list):
        raise ValueError(f"expected a list of commands, got {_tname(v)}")
    if len(v) > MAX_LIST_ITEMS:
        raise ValueError(f"{len(v):,} commands; at most {MAX_LIST_ITEMS:,}")
    # A flat list of strings is ambiguous: treat it as several shell commands,
    # which is how people write lists of gates.
    return tuple(_command(x) for x in v)


def _rel_path(v: Any) -> str:
    p = PurePosixPath(text(v))
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(f"{shown(v)} must be a relative path inside the project (no '..')")
    if any(part.lower() == ".git" for part in p.parts):
        raise ValueError(f"{shown(v)} reaches into .git, which git and agentrun manage; name files of the project")
    return v


def _pattern(v: Any) -> str:
    segment = globs.git_segment(_rel_path(v))
    if segment is not None:
        part = "" if segment == globs.parse(v).text else f" (its part {shown(segment)} does)"
        raise ValueError(f"{shown(v)} matches .git{part}, which git and agentrun manage (in a worktree it is a "
                         "file pointing at the repository); name files of the project")
    return v


_globs = _list_of(_pattern)


def _untracked_pattern(v: Any) -> str:
    if globs.matches_any_file(_pattern(v)):
        raise ValueError(f"{shown(v)} matches every file; name the untracked files to copy, e.g. [\".env\"]")
    if any("**" in part and part != "**" for part in PurePosixPath(v).parts):  # pathlib's glob refuses it
        raise ValueError(f"{shown(v)}: '**' can only be a whole part of the path, e.g. \"config/**/*.local\"")
    return v


FIELDS: dict[str, Callable[[Any], Any]] = {
    "id": _str,
    "title": _title,
    "description": _description,
    "type": choice(TYPES),
    "priority": choice(PRIORITIES),
    "complexity": choice(COMPLEXITIES),
    "depends_on": _list_of(_str),
    "estimate": _duration,
    "files": _globs,
    "run": _command,
    "cwd": _rel_path,
    "env": _env,
    "secrets": _list_of(_env_name),
    "timeout": _opt_duration,
    "retries": _whole(MAX_RETRIES),
    "retry_backoff": _backoff,
    "tags": _list_of(_str),
    "isolation": choice(ISOLATIONS),
    "setup": commands,
    "copy_untracked": _list_of(_untracked_pattern),
    "gates": commands,
    "expect_changes": _bool,
    "scope": choice(SCOPES),
    "baseline_gates": _bool,
    "gate_after_merge": _bool,
    "on_conflict": choice(ON_CONFLICT),
    "merge": choice(MERGE_STRATEGIES),
    "conflict_group": nonblank_name,
    "parallel_ok": _bool,
    "agent": choice(AGENTS),
    "model": nonblank_name,
    "fallbacks": _list_of(_str),
    "max_repairs": _whole(MAX_REPAIRS),
    "edit_format": choice(EDIT_FORMATS),
    "max_cost_usd": lambda v: number(v, 0, MAX_COST_USD),
    "max_tokens": _whole(MAX_TOKENS),
}
