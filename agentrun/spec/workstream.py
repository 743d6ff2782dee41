"""The values a workstream source turns into: ``Workstream``, the run ``Budget`` and ``LLMSettings``,
their canonical JSON form and hash, and rebuilding workstreams from the snapshots a run recorded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
from dataclasses import MISSING, asdict, dataclass, field, fields as dataclass_fields
from typing import Any, Callable

from agentrun.spec.command import Command
from agentrun.spec.fields import FIELDS, commands
from agentrun.spec.models import DEFAULT_MODEL, Model, Rules, resolve


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
    if FIELDS[name] is commands:
        return tuple(map(_restored_command, value))
    return tuple(value) if isinstance(value, list) else value


def _restored_command(value: Any) -> Command:
    if isinstance(value, dict):
        inner = _restored_command(value["run"])
        return Command(argv=inner.argv, shell=inner.shell, name=value.get("name", ""))
    return Command(argv=tuple(value)) if isinstance(value, list) else Command(shell=value)
