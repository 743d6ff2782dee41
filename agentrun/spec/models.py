"""Model presets, user model entries, and which model each workstream gets. Pure core."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from agentrun.spec.durations import parse_duration
from agentrun.spec.values import number, shown, shown_names, text, whole_number

OPENROUTER = "https://openrouter.ai/api/v1"
EDIT_FORMATS = ("diff", "whole")
DEFAULT_MODEL = "deepseek-chat"
MAX_MODEL_TOKENS = 100_000_000        # context_window and max_output_tokens
MAX_PRICE_PER_MTOK = 10_000           # USD per million tokens


@dataclass(frozen=True)
class Model:
    name: str
    id: str                              # the provider's model id
    base_url: str = OPENROUTER
    api_key_env: str | None = "OPENROUTER_API_KEY"
    context_window: int = 32_768
    edit_format: str = "diff"
    input_cost_per_mtok: float | None = None    # USD per million prompt tokens; None = unknown
    output_cost_per_mtok: float | None = None
    max_output_tokens: int = 4096
    timeout: float | None = None                 # seconds one call may take in all; None = the defaults

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Price from the table; None (unknown), never 0, when the table has no price."""
        if self.input_cost_per_mtok is None or self.output_cost_per_mtok is None:
            return None
        return (prompt_tokens * self.input_cost_per_mtok + completion_tokens * self.output_cost_per_mtok) / 1e6

    @property
    def is_local(self) -> bool:
        host = self.base_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        return host in ("127.0.0.1", "localhost", "::1", "[::1]")


# Prices in USD per million tokens as listed by OpenRouter (2026); context windows in tokens.
PRESETS: dict[str, Model] = {m.name: m for m in (
    Model("deepseek-chat", "deepseek/deepseek-chat-v3.1", context_window=163_840, edit_format="diff",
          input_cost_per_mtok=0.27, output_cost_per_mtok=1.10, max_output_tokens=8192),
    Model("deepseek-r1", "deepseek/deepseek-r1", context_window=163_840, edit_format="diff",
          input_cost_per_mtok=0.55, output_cost_per_mtok=2.19, max_output_tokens=8192),
    Model("gemini-flash", "google/gemini-2.5-flash", context_window=1_048_576, edit_format="diff",
          input_cost_per_mtok=0.30, output_cost_per_mtok=2.50, max_output_tokens=8192),
    Model("llama-3.3", "meta-llama/llama-3.3-70b-instruct", context_window=131_072, edit_format="whole",
          input_cost_per_mtok=0.13, output_cost_per_mtok=0.39),
    Model("mistral-small", "mistralai/mistral-small-3.2-24b-instruct", context_window=131_072,
          edit_format="whole", input_cost_per_mtok=0.10, output_cost_per_mtok=0.30),
    Model("qwen-coder", "qwen/qwen-2.5-coder-32b-instruct", context_window=32_768, edit_format="whole",
          input_cost_per_mtok=0.07, output_cost_per_mtok=0.16),
    Model("gpt-4o-mini", "gpt-4o-mini", base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY",
          context_window=128_000, edit_format="diff", input_cost_per_mtok=0.15, output_cost_per_mtok=0.60),
    Model("local", "local", base_url="http://127.0.0.1:8080/v1", api_key_env=None, context_window=8192,
          edit_format="whole", input_cost_per_mtok=0.0, output_cost_per_mtok=0.0),
)}

def _model_id(v: Any) -> str:
    if not text(v).strip():
        raise ValueError(f"{shown(v)} is blank; give the provider's model id")
    return v


def _base_url(v: Any) -> str:
    if not text(v).lower().startswith(("http://", "https://")):
        raise ValueError(f"{shown(v)} is not an http:// or https:// URL, e.g. \"http://127.0.0.1:8080/v1\"")
    return v


def _api_key_env(v: Any) -> str:
    if text(v) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
        raise ValueError(f"{shown(v)} is not an environment variable name; name the variable holding the key, "
                         "or \"\" for none")
    return v


def _edit_format(v: Any) -> str:
    if v not in EDIT_FORMATS:
        raise ValueError("use \"diff\" or \"whole\"")
    return v


def _timeout(v: Any) -> float:
    seconds = parse_duration(v)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


MODEL_FIELDS: dict[str, Callable[[Any], Any]] = {
    "id": _model_id, "base_url": _base_url, "api_key_env": _api_key_env,
    "context_window": lambda v: whole_number(v, 1, MAX_MODEL_TOKENS), "edit_format": _edit_format,
    "input_cost_per_mtok": lambda v: number(v, 0, MAX_PRICE_PER_MTOK),
    "output_cost_per_mtok": lambda v: number(v, 0, MAX_PRICE_PER_MTOK),
    "max_output_tokens": lambda v: whole_number(v, 1, MAX_MODEL_TOKENS), "timeout": _timeout}


def parse_models(section: Any, where: str, problems: list[str]) -> dict[str, Model]:
    """``[models.NAME]`` tables: new entries, or overrides of a preset's fields."""
    out: dict[str, Model] = {}
    if not isinstance(section, dict):
        problems.append(f"{where}: section 'models': expected [models.NAME] tables")
        return out
    for name, fields in section.items():
        table = f"{where}: [models.{shown(name)[1:-1]}]"
        try:
            text(name)
        except ValueError as exc:
            problems.append(f"{table}: the model name {exc}")
            continue
        if not isinstance(fields, dict):
            problems.append(f"{table}: expected a table")
            continue
        values: dict[str, Any] = {}
        for key, value in fields.items():
            check = MODEL_FIELDS.get(key)
            if check is None:
                hint = difflib.get_close_matches(key, MODEL_FIELDS, n=1)
                problems.append(f"{table} field {shown(key)}: unknown field"
                                + (f"; did you mean '{hint[0]}'?" if hint else ""))
                continue
            try:
                values[key] = check(value)
            except ValueError as exc:
                problems.append(f"{table} field '{key}': {exc}")
        base = PRESETS.get(name)
        if base is None and "id" not in values:
            if "id" not in fields:  # an id given but invalid is reported as such, not also as missing
                problems.append(f"{table} field 'id': required for a model that is not a preset "
                                f"(presets: {', '.join(sorted(PRESETS))})")
            continue
        if base is None:
            # A new entry needs a key only for OpenRouter, unless it names one.
            url = values.get("base_url", OPENROUTER)
            base = Model(name, values["id"], api_key_env="OPENROUTER_API_KEY" if url == OPENROUTER else None,
                         input_cost_per_mtok=None, output_cost_per_mtok=None)
        elif "base_url" in values and values["base_url"] != base.base_url and "api_key_env" not in values:
            # A preset pointed at another endpoint does not take the preset's key there (an
            # OpenRouter key must not be sent to a proxy or a local server); name one to send one.
            values["api_key_env"] = None
        if values.get("api_key_env") == "":
            values["api_key_env"] = None  # api_key_env = "" : a keyless server
        out[name] = replace(base, name=name, **values)
    return out


def resolve(name: str, models: Mapping[str, Model]) -> Model:
    """A model by name: user entries, then presets, then a full provider id ("vendor/model").

    Raises ValueError naming the closest known names.
    """
    if name in models:
        return models[name]
    if name in PRESETS:
        return PRESETS[name]
    if "/" in name:
        # A provider id written directly: OpenRouter, price unknown unless it matches a preset's id.
        for preset in PRESETS.values():
            if preset.id == name:
                return replace(preset, name=name)
        return Model(name, name, input_cost_per_mtok=None, output_cost_per_mtok=None)
    known = set(models) | set(PRESETS)
    hints = difflib.get_close_matches(name, sorted(known), n=3)
    hint = f"did you mean {shown_names(hints)}?" if hints else f"known models: {shown_names(known)}"
    raise ValueError(f"unknown model {shown(name)}; {hint} (or write a provider id such as 'vendor/model')")


@dataclass(frozen=True)
class Rules:
    """Model selection rules from ``[defaults]``."""

    default: str = DEFAULT_MODEL
    by_complexity: Mapping[str, str] | None = None
    by_type: Mapping[str, str] | None = None


def select_model(ws_model: str | None, ws_type: str, complexity: str, rules: Rules) -> tuple[str, str]:
    """(model name, why): the workstream's own, else by complexity, else by type, else the default."""
    if ws_model:
        return ws_model, "workstream"
    if rules.by_complexity and complexity in rules.by_complexity:
        return rules.by_complexity[complexity], f"complexity = {complexity}"
    if rules.by_type and ws_type in rules.by_type:
        return rules.by_type[ws_type], f"type = {ws_type}"
    return rules.default, "default"
