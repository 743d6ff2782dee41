"""What `agentrun models`, `plan` and `logs --conversation` show about models."""

from __future__ import annotations

import json
from pathlib import Path

from agentrun.agents.llm.agent import expand_targets, task_text
from agentrun.agents.llm.context import estimate_tokens
from agentrun.spec.models import PRESETS, Model
from agentrun.spec.load import load_source
from agentrun.spec.workstream import LLMSettings, Workstream


def model_table(source: str) -> tuple[list[Model], list[tuple[str, str, str, tuple[str, ...]]]]:
    """Every known model (presets, then the source's own entries), and each agent workstream's pick."""
    settings, workstreams = LLMSettings(), []
    path = Path(source)
    if path.is_file() or (path.is_dir() and any(p.suffix in (".toml", ".json") for p in path.iterdir())):
        loaded = load_source(source)
        settings, workstreams = loaded.llm, loaded.workstreams
    known = {**PRESETS, **settings.models}
    rows = [(ws.id, ws.model, ws.model_reason or "workstream", ws.fallbacks) for ws in workstreams if ws.agent]
    return sorted(known.values(), key=lambda m: m.name), rows


def estimate_call(ws: Workstream, settings: LLMSettings, root: Path) -> tuple[int, int, float | None]:
    """(prompt tokens, completion tokens, cost USD or None) of one round of the agent on ``ws``."""
    model = settings.model_for(ws)
    targets = expand_targets(root, ws.files)
    prompt = estimate_tokens(task_text(ws, sorted(targets)), "prose") + sum(
        estimate_tokens(text) for text in targets.values()) + 300   # system prompt and framing
    body = sum(estimate_tokens(text) for text in targets.values())
    fmt = ws.edit_format or model.edit_format
    completion = min(model.max_output_tokens, max(256, body if fmt == "whole" else body // 3))
    return prompt, completion, model.cost(prompt, completion)


def render_conversation(path: Path) -> str:
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        kind = rec.get("kind")
        if kind == "message":
            out.append(f"--- {rec.get('role')} ---\n{rec.get('content', '')}")
        elif kind == "reply":
            tokens = f"{rec.get('prompt_tokens')} prompt / {rec.get('completion_tokens')} completion tokens"
            cached = ", from cache" if rec.get("cached") else ""
            out.append(f"--- assistant ({rec.get('model')}, {tokens}{cached}) ---\n{rec.get('content', '')}")
        elif kind == "applied":
            out.append(f"--- applied edits: {', '.join(rec.get('files', [])) or 'none'} ---")
        elif kind == "edit_problem":
            out.append(f"--- edits rejected ---\n{rec.get('feedback', '')}")
        else:
            detail = {k: v for k, v in rec.items() if k not in ("ts", "kind")}
            out.append(f"--- {kind} {json.dumps(detail) if detail else ''} ---")
    return "\n\n".join(out)
