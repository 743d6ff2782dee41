"""``agentrun report models``: how each model, and each kind of workstream, fared in a run.

Same layers as ``report_data``:

* ``collect_models`` reads the run, its workstreams, its rows of the
  ``llm_calls`` ledger (one per call attempt) and the ``llm_fallback`` events
  of its event log, in one snapshot of a read-only ``StateStore``;
* ``build_models_report`` is pure: rows in, one dict out (the JSON output,
  schema ``agentrun.models/1``, fields in ``MODELS_FIELDS_DOC``);
* ``render_models_text`` prints it.

Unknown costs are never counted as $0: ``cost_usd`` sums the known costs and
``unknown_cost_calls`` says how many answered calls had none.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from agentrun.store.events import read_events
from agentrun.store.state import FINAL_STATUSES, StateStore
from agentrun.views.status import resolve_run

MODELS_SCHEMA = "agentrun.models/1"
OK, CACHED, BUDGET = "ok", "cached", "budget"
RATE_LIMIT_STATUSES = ("rate_limit", "quota")
# Ledger statuses that are not calls the provider answered or refused: a cache hit, a call the budget stopped.
NOT_SENT = (CACHED, BUDGET)

MODELS_FIELDS_DOC = """\
`agentrun report models RUN_ID --format json`, schema "agentrun.models/1":

  schema, generated_at
  run                {id, status, created_at, finished_at}
  llm_recorded       true when the run has rows in the llm_calls ledger
  fallback_source    "events" (llm_fallback events of the run's events.jsonl)
                     or "ledger" (the event log is missing: answers given by a
                     model other than the workstream's first choice)
  models             list, by model name:
    model, model_ids   agentrun's name; the provider ids seen for it
    calls              ledger rows (every call attempt, cache hits and
                       budget refusals included)
    ok, cached, budget rows with that status
    sent               calls sent to the provider: calls - cached - budget
    success_rate       ok / sent (null when nothing was sent)
    latency_p50_s, latency_p95_s
                       of ok calls, linear interpolation between ranks
                       (null without ok calls)
    prompt_tokens, completion_tokens
                       sums of what the provider reported (null when no call
                       reported it)
    cost_usd           sum of the known costs (failed calls cost nothing; null
                       when calls were answered and none has a known cost); a
                       lower bound when unknown_cost_calls > 0
    unknown_cost_calls ok calls whose cost is unknown (never counted as 0)
    rate_limit_hits    calls answered rate_limit or quota
    fallbacks          answers this model gave as a fallback (see
                       fallback_source)
    off_primary_calls  calls to this model by workstreams whose first choice
                       was another model
    errors             {error kind: calls}, every status but ok, cached, budget
  types              list, by workstream type:
    type, workstreams  type (from the workstream's definition) and how many
    counts             {status: workstreams}
    done, finished     done; in a final status (done, failed, blocked, conflict)
    success_rate       done / finished (null when none finished)
    llm_calls, cost_usd, unknown_cost_calls
                       over the ledger rows of those workstreams, as above
  totals             calls, sent, ok, success_rate, cost_usd (null without
                     LLM calls), unknown_cost_calls, rate_limit_hits, fallbacks
"""


@dataclass
class ModelsData:
    run: dict[str, Any]
    workstreams: list[dict[str, Any]]      # ws_id, status, spec (JSON text)
    calls: list[dict[str, Any]]            # llm_calls rows of the run (empty when none or no ledger)
    fallback_events: list[dict[str, Any]] | None   # llm_fallback events; None when the log is missing


def _ledger_rows(db: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    if db.execute("SELECT name FROM sqlite_master WHERE name = 'llm_calls'").fetchone() is None:
        return []
    rows = db.execute("SELECT * FROM llm_calls WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
    return [dict(r) for r in rows]


def read_fallback_events(path: Path) -> list[dict[str, Any]] | None:
    try:
        records, _, _ = read_events(path)
    except OSError:
        return None
    return [r for r in records if r.get("type") == "llm_fallback"]


def collect_models(store: StateStore, run_id: str | None) -> ModelsData:
    """The rows of a run (default: the latest) in one snapshot; UsageError if unknown."""
    with store.snapshot():
        run = resolve_run(store, run_id)
        rid = run["id"]
        workstreams = [{"ws_id": w["ws_id"], "status": w["status"], "spec": w["spec"]}
                       for w in store.workstreams(rid)]
        calls = _ledger_rows(store.db, rid)
    events = read_fallback_events(store.path.parent / "runs" / rid / "events.jsonl")
    return ModelsData(dict(run), workstreams, calls, events)


def load_models_report(store: StateStore, run_id: str | None, *, now: float | None = None) -> dict[str, Any]:
    return build_models_report(collect_models(store, run_id), now=time.time() if now is None else now)


# --- the numbers -------------------------------------------------------------------

def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _spec(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _sum_known(values: Iterable[Any]) -> Any:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _cost(rows: list[dict[str, Any]]) -> tuple[float | None, int]:
    """(sum of the known costs, answered calls of unknown cost).

    Failed calls are not billed (the ledger leaves their cost NULL, as the
    budget checks read it). The sum is None, not $0, when some call was
    answered and no cost at all is known.
    """
    known = _sum_known(r["cost_usd"] for r in rows)
    unknown = sum(1 for r in rows if r["status"] == OK and r["cost_usd"] is None)
    if known is None:
        return (None if unknown else 0.0), unknown
    return round(known, 10), unknown


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def build_models_report(data: ModelsData, *, now: float) -> dict[str, Any]:
    specs = {w["ws_id"]: _spec(w["spec"]) for w in data.workstreams}
    primary = {ws_id: s.get("model") for ws_id, s in specs.items()}

    fallback_source = "events" if data.fallback_events is not None else "ledger"
    fallbacks: dict[str, int] = {}
    if data.fallback_events is not None:
        for e in data.fallback_events:
            if e.get("model"):
                fallbacks[e["model"]] = fallbacks.get(e["model"], 0) + 1

    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in data.calls:
        by_model.setdefault(row["model"], []).append(row)

    models = []
    for name in sorted(by_model):
        rows = by_model[name]
        statuses: dict[str, int] = {}
        for r in rows:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        ok_rows = [r for r in rows if r["status"] == OK]
        sent = sum(1 for r in rows if r["status"] not in NOT_SENT)
        latencies = [r["latency_s"] for r in ok_rows if r["latency_s"] is not None]
        off_primary = [r for r in rows if primary.get(r["ws_id"]) and primary[r["ws_id"]] != r["model"]]
        cost, unknown = _cost(rows)
        if data.fallback_events is None:
            answered_as_fallback = sum(1 for r in off_primary if r["status"] in (OK, CACHED))
        else:
            answered_as_fallback = fallbacks.get(name, 0)
        models.append({
            "model": name,
            "model_ids": sorted({r["model_id"] for r in rows}),
            "calls": len(rows), "ok": len(ok_rows), "cached": statuses.get(CACHED, 0),
            "budget": statuses.get(BUDGET, 0), "sent": sent,
            "success_rate": _rate(len(ok_rows), sent),
            "latency_p50_s": _r(percentile(latencies, 50)), "latency_p95_s": _r(percentile(latencies, 95)),
            "prompt_tokens": _sum_known(r["prompt_tokens"] for r in rows),
            "completion_tokens": _sum_known(r["completion_tokens"] for r in rows),
            "cost_usd": cost, "unknown_cost_calls": unknown,
            "rate_limit_hits": sum(statuses.get(s, 0) for s in RATE_LIMIT_STATUSES),
            "fallbacks": answered_as_fallback,
            "off_primary_calls": len(off_primary),
            "errors": {k: statuses[k] for k in sorted(statuses) if k not in (OK, *NOT_SENT)},
        })

    calls_by_ws: dict[str, list[dict[str, Any]]] = {}
    for row in data.calls:
        calls_by_ws.setdefault(row["ws_id"], []).append(row)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for w in data.workstreams:
        by_type.setdefault(specs[w["ws_id"]].get("type") or "other", []).append(w)
    types = []
    for kind in sorted(by_type):
        wss = by_type[kind]
        counts: dict[str, int] = {}
        for w in wss:
            counts[w["status"]] = counts.get(w["status"], 0) + 1
        finished = sum(n for s, n in counts.items() if s in FINAL_STATUSES)
        rows = [r for w in wss for r in calls_by_ws.get(w["ws_id"], [])]
        cost, unknown = _cost(rows)
        types.append({
            "type": kind, "workstreams": len(wss), "counts": dict(sorted(counts.items())),
            "done": counts.get("done", 0), "finished": finished,
            "success_rate": _rate(counts.get("done", 0), finished),
            "llm_calls": len(rows), "cost_usd": cost, "unknown_cost_calls": unknown,
        })

    total_cost, total_unknown = _cost(data.calls)
    sent = sum(m["sent"] for m in models)
    ok = sum(m["ok"] for m in models)
    run = data.run
    return {
        "schema": MODELS_SCHEMA,
        "generated_at": now,
        "run": {"id": run["id"], "status": run["status"], "created_at": run["created_at"],
                "finished_at": run["finished_at"]},
        "llm_recorded": bool(data.calls),
        "fallback_source": fallback_source,
        "models": models,
        "types": types,
        "totals": {"calls": len(data.calls), "sent": sent, "ok": ok, "success_rate": _rate(ok, sent),
                   "cost_usd": total_cost if data.calls else None, "unknown_cost_calls": total_unknown,
                   "rate_limit_hits": sum(m["rate_limit_hits"] for m in models),
                   "fallbacks": sum(m["fallbacks"] for m in models)},
    }


# --- text --------------------------------------------------------------------------

def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f}ms" if v < 1 else f"{v:.2f}s"


def _int(v: Any) -> str:
    return "-" if v is None else f"{int(v):,}"


def _money(cost: float | None, unknown: int) -> str:
    text = "-" if cost is None else f"${cost:.4f}"
    return f"{text} (+{unknown} unknown)" if unknown else text


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(headers), *(line(r) for r in rows)]


def render_models_text(rep: dict[str, Any]) -> str:
    from agentrun.views.report import _clean   # terminal-safe names (model names come from user config)
    run = rep["run"]
    lines = [f"run {run['id']}  {run['status']}  (models and workstream types)", ""]
    if not rep["models"]:
        lines.append("models: no LLM calls recorded for this run")
    else:
        t = rep["totals"]
        lines.append(f"LLM calls      {t['calls']:,} ({t['sent']:,} sent, {t['ok']:,} ok, success "
                     f"{_pct(t['success_rate'])}), cost {_money(t['cost_usd'], t['unknown_cost_calls'])}, "
                     f"rate-limited {t['rate_limit_hits']:,}, fallbacks {t['fallbacks']:,}")
        lines += ["", "models"]
        rows = [[_clean(m["model"], 32), _int(m["calls"]), _int(m["cached"]), _pct(m["success_rate"]),
                 _secs(m["latency_p50_s"]), _secs(m["latency_p95_s"]), _int(m["prompt_tokens"]),
                 _int(m["completion_tokens"]), _money(m["cost_usd"], m["unknown_cost_calls"]),
                 _int(m["rate_limit_hits"]), _int(m["fallbacks"])] for m in rep["models"]]
        lines += _table(["model", "calls", "cached", "success", "p50", "p95", "prompt", "completion", "cost",
                         "429s", "fallbacks"], rows)
        errs = [m for m in rep["models"] if m["errors"]]
        if errs:
            lines += ["", "errors by kind"]
            for m in errs:
                lines.append(f"  {_clean(m['model'], 32)}: "
                             + ", ".join(f"{_clean(k, 24)} {n}" for k, n in m["errors"].items()))
        if any(m["unknown_cost_calls"] for m in rep["models"]):
            lines += ["", "note: costs are sums of known costs; calls marked unknown had no price "
                          "(not counted as $0)"]
        if rep["fallback_source"] == "ledger":
            lines.append("note: the run's event log is missing; fallbacks counted from the ledger")
    lines += ["", "workstream types"]
    rows = [[_clean(t["type"], 20), _int(t["workstreams"]), _int(t["done"]), _pct(t["success_rate"]),
             _int(t["llm_calls"]), _money(t["cost_usd"], t["unknown_cost_calls"])] for t in rep["types"]]
    lines += _table(["type", "workstreams", "done", "success", "llm calls", "cost"], rows)
    return "\n".join(line.rstrip() for line in lines)


def to_json(rep: dict[str, Any]) -> str:
    return json.dumps(rep, indent=2) + "\n"
