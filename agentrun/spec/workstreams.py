"""Workstream files: parsing and validation.

Pure core: ``parse_documents`` turns already-read documents into validated
``Workstream`` objects or raises one ``SpecError`` listing every problem.
``load_source`` is the thin layer that reads the files.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import operator
import os
import re
import stat
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields as dataclass_fields
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from agentrun.spec import globs
from agentrun.spec.durations import parse_duration
from agentrun.errors import SpecError
from agentrun.spec.models import DEFAULT_MODEL, EDIT_FORMATS, Model, Rules, parse_models, resolve, select_model
from agentrun.spec.values import number, shown, shown_names, shown_path, text, type_name as _tname, whole_number

CONFIG_FILE = "agentrun.toml"
ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
TYPES = ("unit_test", "refactor", "docs", "codegen", "fix", "other")
PRIORITIES = ("critical", "high", "normal", "low")
COMPLEXITIES = ("simple", "moderate", "complex")
ISOLATIONS = ("auto", "worktree", "none")
SCOPES = ("fail", "warn", "off")
ON_CONFLICT = ("fail", "retry")
MERGE_STRATEGIES = ("rebase", "merge")
AGENTS = ("llm",)
# Fields only the built-in agent reads: written on a command workstream they would mean nothing.
AGENT_ONLY = ("model", "fallbacks", "max_repairs", "edit_format", "max_cost_usd", "max_tokens")

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
MAX_FILE_BYTES = 10 * 1024 * 1024      # one workstream file or agentrun.toml
MAX_KEY_PARTS = 64                     # a TOML key or table header: tomllib's time grows with its square
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HINT_CHARS = 200                       # longer names are no typo of a known one: no did-you-mean


@dataclass(frozen=True)
class Command:
    """A command as written: a shell string, or an argv list run without a shell."""

    argv: tuple[str, ...] | None = None
    shell: str | None = None
    name: str = ""

    def popen_args(self) -> list[str]:
        if self.shell is not None:
            return ["/bin/sh", "-c", self.shell]
        return list(self.argv or ())

    def display(self) -> str:
        return self.name or (self.shell if self.shell is not None else " ".join(self.argv or ()))

    def to_json(self) -> Any:
        base: Any = self.shell if self.shell is not None else list(self.argv or ())
        return {"name": self.name, "run": base} if self.name else base


@dataclass
class Workstream:
    id: str
    run: Command | None = None
    source: str = ""
    title: str = ""
    description: str = ""
    type: str = "other"
    priority: str = "normal"
    complexity: str = "moderate"
    depends_on: tuple[str, ...] = ()
    estimate: float | None = None
    files: tuple[str, ...] = ()
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()   # names of API key variables its commands get (see README)
    timeout: float | None = None
    retries: int = 0
    retry_backoff: float = 1.0
    tags: tuple[str, ...] = ()
    # Isolation and integration (see README "Isolation and integration").
    isolation: str = "auto"
    setup: tuple[Command, ...] = ()
    copy_untracked: tuple[str, ...] = ()
    gates: tuple[Command, ...] = ()
    expect_changes: bool | None = None
    scope: str = "fail"
    baseline_gates: bool = False
    gate_after_merge: bool = False
    on_conflict: str = "fail"
    merge: str = "rebase"
    conflict_group: str | None = None
    parallel_ok: bool = True
    # The built-in LLM agent (see README "The built-in LLM agent").
    agent: str | None = None
    model: str | None = None
    fallbacks: tuple[str, ...] = ()
    max_repairs: int = 2
    edit_format: str | None = None
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    model_reason: str = ""          # why this model was picked (not part of the definition)

    @property
    def changes_expected(self) -> bool:
        return self.expect_changes if self.expect_changes is not None else bool(self.files)

    def to_json(self) -> dict[str, Any]:
        """Canonical, JSON-able form: what is snapshotted in the state DB and hashed."""
        return {name: _jsonable(getattr(self, name)) for name in FIELDS}

    def snapshot(self) -> tuple[str, str]:
        """The canonical JSON text of ``to_json`` (keys sorted, compact) and its hash.

        Built field by field, reusing the text of every value left at its default: a run of
        thousands of workstreams snapshots them all before it starts, and most fields of most
        workstreams are defaults. The text is byte for byte what ``json.dumps`` of ``to_json``
        gives, so hashes recorded by older versions still match."""
        fields, values = _snapshot_fields()
        blob = "{" + ",".join([key + (text if value.__class__ is default.__class__ and value == default
                                      else _canonical(_jsonable(value)))
                               for (key, default, text), value in zip(fields, values(self))]) + "}"
        return blob, hashlib.sha256(blob.encode()).hexdigest()[:16]

    def spec_hash(self) -> str:
        return self.snapshot()[1]


# --- field checkers: each returns the normalised value or raises ValueError ---

def _str(v: Any) -> str:
    return text(v)


def _title(v: Any) -> str:
    return text(v, MAX_TITLE_CHARS)


def _description(v: Any) -> str:
    return text(v, MAX_DESCRIPTION_CHARS, one_line=False)


def _name(v: Any) -> str:
    if not text(v).strip():
        raise ValueError(f"{shown(v)} is blank; give a name, or leave the field out")
    return v


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
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
    _env_size(v)
    return dict(v)


def _env_size(env: dict[str, str]) -> None:
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


def _commands(v: Any) -> tuple[Command, ...]:
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
    "type": _choice(TYPES),
    "priority": _choice(PRIORITIES),
    "complexity": _choice(COMPLEXITIES),
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
    "isolation": _choice(ISOLATIONS),
    "setup": _commands,
    "copy_untracked": _list_of(_untracked_pattern),
    "gates": _commands,
    "expect_changes": _bool,
    "scope": _choice(SCOPES),
    "baseline_gates": _bool,
    "gate_after_merge": _bool,
    "on_conflict": _choice(ON_CONFLICT),
    "merge": _choice(MERGE_STRATEGIES),
    "conflict_group": _name,
    "parallel_ok": _bool,
    "agent": _choice(AGENTS),
    "model": _name,
    "fallbacks": _list_of(_str),
    "max_repairs": _whole(MAX_REPAIRS),
    "edit_format": _choice(EDIT_FORMATS),
    "max_cost_usd": lambda v: number(v, 0, MAX_COST_USD),
    "max_tokens": _whole(MAX_TOKENS),
}
# Fields that describe one workstream's identity and cannot be defaults.
NOT_DEFAULTABLE = {"id", "depends_on", "title", "description"}
CONFIG_SECTIONS = ("defaults", "models", "budget")
RULE_KEYS = {"model_by_complexity": COMPLEXITIES, "model_by_type": TYPES}
BUDGET_MODES = ("warn", "soft", "hard")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Command):
        return value.to_json()
    if isinstance(value, tuple):
        return [v.to_json() if isinstance(v, Command) else v for v in value]
    return value


_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


@functools.cache
def _snapshot_fields() -> tuple[list[tuple[str, Any, str]], Callable[[Any], tuple]]:
    """('"name":', default, the default's JSON text) for each field in key order, and a getter
    of a workstream's values in that order."""
    defaults = _field_defaults()
    names = sorted(FIELDS)
    return ([(_canonical(name) + ":", defaults[name], _canonical(_jsonable(defaults[name]))) for name in names],
            operator.attrgetter(*names))


def _field_defaults() -> dict[str, Any]:
    return {f.name: f.default if f.default is not MISSING else
            (f.default_factory() if f.default_factory is not MISSING else None)
            for f in dataclass_fields(Workstream)}


@dataclass(frozen=True)
class Budget:
    """A run budget (``[budget]`` in agentrun.toml, or ``run --budget``)."""

    max_cost_usd: float | None = None
    max_tokens: int | None = None
    warn_at: float = 0.8
    mode: str = "soft"

    def to_json(self) -> dict[str, Any]:
        return {"max_cost_usd": self.max_cost_usd, "max_tokens": self.max_tokens, "warn_at": self.warn_at,
                "mode": self.mode}


@dataclass
class LLMSettings:
    """What agentrun.toml says about models: user entries, selection rules, the run budget."""

    models: dict[str, Model] = field(default_factory=dict)
    rules: Rules = field(default_factory=Rules)
    budget: Budget = field(default_factory=Budget)

    def model_for(self, ws: "Workstream") -> Model:
        return resolve(ws.model or self.rules.default, self.models)

    def chain_for(self, ws: "Workstream") -> list[Model]:
        """The workstream's model, then its fallbacks, each once."""
        chain, seen = [], set()
        for name in (ws.model or self.rules.default, *ws.fallbacks):
            if name not in seen:
                seen.add(name)
                chain.append(resolve(name, self.models))
        return chain

    def to_json(self) -> dict[str, Any]:
        return {"models": {n: asdict(m) for n, m in self.models.items()},
                "rules": {"default": self.rules.default, "by_complexity": dict(self.rules.by_complexity or {}),
                          "by_type": dict(self.rules.by_type or {})},
                "budget": self.budget.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LLMSettings":
        rules = data.get("rules", {})
        return cls({n: Model(**m) for n, m in data.get("models", {}).items()},
                   Rules(rules.get("default", DEFAULT_MODEL), rules.get("by_complexity") or None,
                         rules.get("by_type") or None),
                   Budget(**data.get("budget", {})))


@dataclass
class Source:
    """What a workstream source holds once loaded and validated."""

    path: str
    workstreams: list[Workstream]
    llm: LLMSettings
    files: list[str]

    def by_id(self) -> dict[str, Workstream]:
        return {w.id: w for w in self.workstreams}


def _did_you_mean(name: Any, options, known: str = "fields") -> str:
    hint = (difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.6)
            if isinstance(name, str) and len(name) <= HINT_CHARS else [])
    return f"; did you mean {shown(hint[0])}?" if hint else f"; known {known}: {shown_names(options)}"


def _check_fields(raw: dict[str, Any], where: str, problems: list[str], allowed) -> dict[str, Any]:
    """Validate each known field; report unknown ones. Returns the normalised values."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in allowed:
            problems.append(f"{where}: field {shown(key)}: unknown field{_did_you_mean(key, allowed)}")
            continue
        try:
            out[key] = FIELDS[key](value)
        except ValueError as exc:
            problems.append(f"{where}: field {shown(key)}: {exc}")
    return out


def parse_config(name: str, doc: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """The ``[defaults]`` of an agentrun.toml, validated field by field."""
    return parse_config_full(name, doc, problems)[0]


def parse_config_full(name: str, doc: dict[str, Any], problems: list[str]) -> tuple[dict[str, Any], LLMSettings]:
    """``[defaults]`` (workstream fields and model rules), ``[models.NAME]`` and ``[budget]``."""
    name = shown_path(name)
    for key in doc:
        if key not in CONFIG_SECTIONS:
            hint = _did_you_mean(key, CONFIG_SECTIONS, "sections")
            problems.append(f"{name}: section {shown(key)}: unknown section{hint}")
    settings = LLMSettings()
    if "models" in doc:
        settings.models = parse_models(doc["models"], name, problems)
    if "budget" in doc:
        settings.budget = _parse_budget(name, doc["budget"], problems)
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(f"{name}: section 'defaults': expected a table")
        return {}, settings
    defaults = dict(defaults)
    rules: dict[str, dict[str, str]] = {}
    for key, allowed_keys in RULE_KEYS.items():
        table = defaults.pop(key, None)
        if table is None:
            continue
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            problems.append(f"{name} [defaults]: field '{key}': expected a table such as "
                            f"{{ {allowed_keys[0]} = \"model-name\" }}")
            continue
        named = True
        for k, model_name in table.items():
            if k not in allowed_keys:
                problems.append(f"{name} [defaults]: field '{key}': {shown(k)} is not one of {', '.join(allowed_keys)}")
            try:
                _name(model_name)
            except ValueError as exc:
                problems.append(f"{name} [defaults]: field '{key}': {shown(k)}: {exc}")
                named = False
        if named:
            rules[key] = dict(table)
    allowed = set(FIELDS) - NOT_DEFAULTABLE
    values = _check_fields(defaults, f"{name} [defaults]", problems, allowed)
    settings.rules = Rules(values.pop("model", DEFAULT_MODEL), rules.get("model_by_complexity"),
                           rules.get("model_by_type"))
    for model_name in (settings.rules.default, *(settings.rules.by_complexity or {}).values(),
                       *(settings.rules.by_type or {}).values()):
        try:
            resolve(model_name, settings.models)
        except ValueError as exc:
            problems.append(f"{name} [defaults]: {exc}")
    return values, settings


def _parse_budget(name: str, raw: Any, problems: list[str]) -> Budget:
    if not isinstance(raw, dict):
        problems.append(f"{name}: section 'budget': expected a table")
        return Budget()
    checks: dict[str, Callable[[Any], Any]] = {
        "max_cost_usd": FIELDS["max_cost_usd"], "max_tokens": FIELDS["max_tokens"],
        "warn_at": lambda v: number(v, 0, 1), "mode": _choice(BUDGET_MODES)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in checks:
            problems.append(f"{name} [budget]: field {shown(key)}: unknown field{_did_you_mean(key, checks)}")
            continue
        try:
            values[key] = checks[key](value)
        except ValueError as exc:
            problems.append(f"{name} [budget]: field '{key}': {exc}")
    return Budget(**values)


def _entries(name: str, doc: Any, problems: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Split one document into (where, raw workstream) pairs."""
    stem = Path(name).stem
    name = shown_path(name)
    if not isinstance(doc, dict):
        problems.append(f"{name}: expected a table (one workstream) or [[workstream]] tables")
        return []
    if "workstream" in doc:
        extra = [k for k in doc if k != "workstream"]
        if extra:
            problems.append(f"{name}: field {shown(extra[0])}: a file with [[workstream]] tables holds nothing else; "
                            "move it into a [[workstream]] or [defaults] in agentrun.toml")
        items = doc["workstream"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            problems.append(f"{name}: field 'workstream': expected [[workstream]] tables")
            return []
        out = []
        for index, item in enumerate(items):
            ws_id = item.get("id")
            if ws_id is None:
                problems.append(f"{name}: workstream #{index + 1}: field 'id': required in a [[workstream]] table")
                continue
            out.append((f"{name}: workstream {shown(ws_id)}", item))
        return out
    item = dict(doc)
    item.setdefault("id", stem)
    return [(f"{name}: workstream {shown(item['id'])}", item)]


def parse_documents(docs: list[tuple[str, Any]], config: dict[str, Any] | None = None,
                    config_name: str = CONFIG_FILE) -> list[Workstream]:
    """Validate every document; return workstreams sorted by id or raise SpecError."""
    return parse_source(docs, config, config_name)[0]


def parse_source(docs: list[tuple[str, Any]], config: dict[str, Any] | None = None,
                 config_name: str = CONFIG_FILE) -> tuple[list[Workstream], LLMSettings]:
    """Validate documents and configuration together; raise one SpecError listing every problem."""
    problems: list[str] = []
    defaults, settings = parse_config_full(config_name, config or {}, problems)
    raw_defaults = (config or {}).get("defaults")
    # A run that is given but invalid (here or in [defaults]) is reported as
    # such; "required" is only for a run given nowhere.
    run_in_defaults = isinstance(raw_defaults, dict) and "run" in raw_defaults
    built: list[Workstream] = []
    seen: dict[str, str] = {}
    for name, doc in docs:
        for where, raw in _entries(name, doc, problems):
            before = len(problems)
            values = _check_fields(raw, where, problems, FIELDS)
            ws_id = values.get("id")
            if isinstance(ws_id, str) and not ID_RE.fullmatch(ws_id):
                problems.append(f"{where}: field 'id': {shown(ws_id)} is not a valid id; use lowercase letters, "
                                "digits, '.', '_' and '-', starting with a letter or digit")
            elif isinstance(ws_id, str) and (".." in ws_id or ws_id.endswith(".lock") or ws_id.endswith(".")):
                problems.append(f"{where}: field 'id': {shown(ws_id)} cannot contain '..' or end in '.' or '.lock' "
                                "(it becomes a git branch name)")
            if isinstance(ws_id, str):
                if ws_id in seen:
                    problems.append(f"{where}: field 'id': duplicate id {shown(ws_id)}, also defined in "
                                    f"{shown_path(seen[ws_id])}")
                else:
                    seen[ws_id] = name
            merged = {**defaults, **values}
            if "env" in merged:  # a fresh dict each: workstreams never share one env
                merged["env"] = {**defaults.get("env", {}), **values.get("env", {})}
            if "agent" in raw and "run" in raw:
                problems.append(f"{where}: field 'agent': a workstream has either `run` (a command) or "
                                "`agent` (the built-in LLM agent), not both")
            elif "agent" in merged:
                merged.pop("run", None)  # an agent workstream does not inherit a default command
            elif "run" not in merged and "run" not in raw and not run_in_defaults:
                problems.append(f"{where}: field 'run': required; give the command to run, "
                                "e.g. run = \"pytest -q\" (or agent = \"llm\")")
            if "agent" not in merged:
                # From [defaults] they are meant for the agent workstreams; written here, a mistake.
                problems.extend(f"{where}: field '{key}': only the built-in agent (agent = \"llm\") reads it, "
                                "and this workstream runs a command; remove it" for key in AGENT_ONLY if key in raw)
            if "env" in merged and "env" in values:
                try:
                    _env_size(merged["env"])
                except ValueError as exc:
                    problems.append(f"{where}: field 'env': with the [defaults] env, {exc}")
            if len(problems) > before or ("run" not in merged and "agent" not in merged):
                continue
            ws = Workstream(source=name, **merged)
            if ws.agent:
                _check_agent(ws, where, settings, problems)
            built.append(ws)
    by_id = {w.id: w for w in built}
    for ws in built:
        for dep in ws.depends_on:
            if dep == ws.id:
                problems.append(f"{shown_path(ws.source)}: workstream '{ws.id}': field 'depends_on': "
                                "a workstream cannot depend on itself")
            elif dep not in by_id and dep not in seen:
                problems.append(f"{shown_path(ws.source)}: workstream '{ws.id}': field 'depends_on': unknown "
                                f"workstream {shown(dep)}{_did_you_mean(dep, seen, 'workstreams') if seen else ''}")
    for cycle in find_cycles(built):
        first = by_id[cycle[0]]
        problems.append(f"{shown_path(first.source)}: workstream '{first.id}': field 'depends_on': dependency cycle "
                        + " -> ".join(cycle + [cycle[0]]))
    if problems:
        raise SpecError(problems)
    return sorted(built, key=lambda w: w.id), settings


def _check_agent(ws: Workstream, where: str, settings: LLMSettings, problems: list[str]) -> None:
    """Pick the model now (so the snapshot records it) and check every name resolves."""
    name, ws.model_reason = select_model(ws.model, ws.type, ws.complexity, settings.rules)
    ws.model = name
    for field_name, value in [("model", name)] + [("fallbacks", f) for f in ws.fallbacks]:
        try:
            resolve(value, settings.models)
        except ValueError as exc:
            problems.append(f"{where}: field '{field_name}': {exc}")
    if not ws.files:
        problems.append(f"{where}: field 'files': required with agent = \"llm\": list the files the agent "
                        "may edit (they are sent to the model in full)")


def find_cycles(workstreams: list[Workstream]) -> list[list[str]]:
    """Each dependency cycle once, as a list of ids in dependency order (a depends on b ...)."""
    graph = {w.id: [d for d in w.depends_on if d != w.id] for w in workstreams}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if state.get(start):
            continue
        path: list[str] = []
        stack = [(start, iter(sorted(graph[start])))]
        state[start] = 1
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            if child not in graph:
                continue
            if state.get(child) == 1:
                cycles.append(path[path.index(child):])
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return cycles


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


def workstreams_from_snapshots(snapshots: list[dict[str, Any]], source: str) -> dict[str, Workstream]:
    """Rebuild workstreams from the JSON snapshots a run recorded. They were validated when the
    run started and are taken as they are (a resume of 10,000 workstreams starts sooner, and a
    limit tightened since then does not strand a run that was valid when it began)."""
    defaults = _json_defaults()
    out: dict[str, Workstream] = {}
    for snap in snapshots:
        # Most fields of most workstreams hold their default: those are left to the dataclass.
        values = {k: _restored(k, v) for k, v in snap.items()
                  if v is not None and k in FIELDS and v != defaults[k]}
        if values.get("id") and ("run" in values or "agent" in values):
            out[values["id"]] = Workstream(source=source, **values)
    return out


@functools.cache
def _json_defaults() -> dict[str, Any]:
    return {name: _jsonable(default) for name, default in _field_defaults().items() if name in FIELDS}


def _restored(name: str, value: Any) -> Any:
    """A field's value from its JSON form (``Workstream.to_json``)."""
    if name == "run":
        return _restored_command(value)
    if FIELDS[name] is _commands:
        return tuple(map(_restored_command, value))
    return tuple(value) if isinstance(value, list) else value


def _restored_command(value: Any) -> Command:
    if isinstance(value, dict):
        inner = _restored_command(value["run"])
        return Command(argv=inner.argv, shell=inner.shell, name=value.get("name", ""))
    return Command(argv=tuple(value)) if isinstance(value, list) else Command(shell=value)
