"""A workstream source: its files and agentrun.toml read and validated as a whole.

``parse_source`` turns already-read documents into validated ``Workstream`` objects or raises one
``SpecError`` listing every problem (unknown fields, ids, dependencies, cycles, [defaults],
[models], [budget]). ``load_source`` is the thin layer that reads the files.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from agentrun.errors import SpecError
from agentrun.spec.documents import read_document, read_regular
from agentrun.spec.fields import (BUDGET_MODES, COMPLEXITIES, FIELDS, HINT_CHARS, TYPES, choice, env_size,
                                  nonblank_name)
from agentrun.spec.models import DEFAULT_MODEL, Rules, parse_models, resolve, select_model
from agentrun.spec.values import number, shown, shown_names, shown_path
from agentrun.spec.workstream import Budget, LLMSettings, Workstream

CONFIG_FILE = "agentrun.toml"
ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
# Fields only the built-in agent reads: written on a command workstream they would mean nothing.
AGENT_ONLY = ("model", "fallbacks", "max_repairs", "edit_format", "max_cost_usd", "max_tokens")
# Fields that describe one workstream's identity and cannot be defaults.
NOT_DEFAULTABLE = {"id", "depends_on", "title", "description"}
CONFIG_SECTIONS = ("defaults", "models", "budget")
RULE_KEYS = {"model_by_complexity": COMPLEXITIES, "model_by_type": TYPES}


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


def _check_fields(raw: dict[str, Any], where: str, problems: list[str],
                 checks: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """Validate each field with its checker; report unknown ones. Returns the normalised values."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in checks:
            problems.append(f"{where}: field {shown(key)}: unknown field{_did_you_mean(key, checks)}")
            continue
        try:
            out[key] = checks[key](value)
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
                nonblank_name(model_name)
            except ValueError as exc:
                problems.append(f"{name} [defaults]: field '{key}': {shown(k)}: {exc}")
                named = False
        if named:
            rules[key] = dict(table)
    defaultable = {key: check for key, check in FIELDS.items() if key not in NOT_DEFAULTABLE}
    values = _check_fields(defaults, f"{name} [defaults]", problems, defaultable)
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
        "warn_at": lambda v: number(v, 0, 1), "mode": choice(BUDGET_MODES)}
    return Budget(**_check_fields(raw, f"{name} [budget]", problems, checks))


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
                    env_size(merged["env"])
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
            digest.update(file.name.encode() + b"\0" + read_regular(file) + b"\0")
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

