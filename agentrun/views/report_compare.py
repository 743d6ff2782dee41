"""``agentrun report compare``: the differences between the reports of two runs.

``compare_reports`` is pure: two dicts of ``report_data.build_report`` in, one
dict out (the JSON output, schema ``agentrun.compare/1``, documented in
``report_data.FIELDS_DOC``); ``render_compare`` prints it.
"""

from __future__ import annotations

from typing import Any

from agentrun.spec.durations import format_duration
from agentrun.views.report import fmt_cost, fmt_int, fmt_path, fmt_pct
from agentrun.views.report_data import LLM_COLUMNS

COMPARE_SCHEMA = "agentrun.compare/1"


def _delta(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    d = b - a
    return round(d, 6) if isinstance(d, float) else d


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Differences between two reports: run totals, per workstream, and workstreams in only one run."""
    ra, rb = a["run"], b["run"]
    wa = {w["ws_id"]: w for w in a["workstreams"]}
    wb = {w["ws_id"]: w for w in b["workstreams"]}
    cost = ra["llm_recorded"] or rb["llm_recorded"]
    metrics = ["wall_s", "work_s", "efficiency", "critical_path_s", "workstreams", "attempts", "retries"]
    if cost:
        metrics += [*LLM_COLUMNS, "llm_calls"]
    totals = {m: {"a": ra[m], "b": rb[m], "delta": _delta(ra[m], rb[m])} for m in metrics}
    rows = []
    for ws_id in sorted(set(wa) & set(wb)):
        x, y = wa[ws_id], wb[ws_id]
        row = {"ws_id": ws_id, "status_a": x["status"], "status_b": y["status"],
               "attempts_a": x["attempts"], "attempts_b": y["attempts"],
               "attempts_delta": y["attempts"] - x["attempts"],
               "duration_a_s": x["duration_s"], "duration_b_s": y["duration_s"],
               "duration_delta_s": _delta(x["duration_s"], y["duration_s"]),
               "work_a_s": x["work_s"], "work_b_s": y["work_s"], "work_delta_s": _delta(x["work_s"], y["work_s"])}
        if cost:
            row.update({"cost_a_usd": x["cost_usd"], "cost_b_usd": y["cost_usd"],
                        "cost_delta_usd": _delta(x["cost_usd"], y["cost_usd"])})
        row["status_changed"] = x["status"] != y["status"]
        rows.append(row)
    return {
        "schema": COMPARE_SCHEMA,
        "a": {"id": ra["id"], "status": ra["status"], "counts": ra["counts"], "critical_path": ra["critical_path"]},
        "b": {"id": rb["id"], "status": rb["status"], "counts": rb["counts"], "critical_path": rb["critical_path"]},
        "cost_recorded": cost,
        "totals": totals,
        "workstreams": rows,
        "only_in_a": sorted(set(wa) - set(wb)),
        "only_in_b": sorted(set(wb) - set(wa)),
    }


def _signed_duration(d: float | None) -> str:
    if d is None:
        return "-"
    return ("+" if d >= 0 else "-") + format_duration(abs(d))


def _change(metric: str, a: Any, b: Any, d: Any) -> str:
    if d is None:
        return "-"
    if metric == "efficiency":
        return f"{d * 100:+.0f} pts"
    if metric.endswith("_s"):
        rel = f" ({d / a * 100:+.0f}%)" if a else ""
        return _signed_duration(d) + rel
    if metric == "cost_usd":
        return f"{'+' if d >= 0 else '-'}${abs(d):.4f}"
    return f"{d:+,}" if isinstance(d, int) else f"{d:+}"


def _show(metric: str, v: Any) -> str:
    if v is None:
        return "-"
    if metric == "efficiency":
        return fmt_pct(v)
    if metric.endswith("_s"):
        return format_duration(v)
    if metric == "cost_usd":
        return fmt_cost(v)
    return fmt_int(v)


_METRIC_NAMES = {"wall_s": "wall time", "work_s": "total work", "efficiency": "efficiency",
                 "critical_path_s": "critical path", "workstreams": "workstreams", "attempts": "attempts",
                 "retries": "retries", "prompt_tokens": "prompt tokens", "completion_tokens": "completion tokens",
                 "cost_usd": "cost", "llm_calls": "LLM calls"}


def render_compare(cmp: dict[str, Any]) -> str:
    a, b = cmp["a"], cmp["b"]
    lines = [f"A: run {a['id']}  {a['status']}", f"B: run {b['id']}  {b['status']}", "",
             f"{'':<18} {'A':>12} {'B':>12}  change",
             f"{'status':<18} {a['status']:>12} {b['status']:>12}  {'' if a['status'] == b['status'] else 'changed'}"]
    for metric, t in cmp["totals"].items():
        lines.append(f"{_METRIC_NAMES.get(metric, metric):<18} {_show(metric, t['a']):>12} "
                     f"{_show(metric, t['b']):>12}  {_change(metric, t['a'], t['b'], t['delta'])}")
    lines.append(f"{'critical path A':<18} {fmt_path(a['critical_path']) or '-'}")
    lines.append(f"{'critical path B':<18} {fmt_path(b['critical_path']) or '-'}")
    rows = cmp["workstreams"]
    if rows:
        width = min(40, max([10] + [len(r["ws_id"]) for r in rows]))
        head = (f"{'workstream':<{width}} {'status A -> B':<24} {'tries':>7} {'duration A':>10} "
                f"{'duration B':>10}  {'change':<14}")
        if cmp["cost_recorded"]:
            head += f" {'cost A':>10} {'cost B':>10}"
        lines += ["", head.rstrip()]
        for r in rows:
            status = r["status_a"] if not r["status_changed"] else f"{r['status_a']} -> {r['status_b']}"
            line = (f"{r['ws_id']:<{width}} {status:<24} {str(r['attempts_a']) + '->' + str(r['attempts_b']):>7} "
                    f"{format_duration(r['duration_a_s']):>10} {format_duration(r['duration_b_s']):>10}  "
                    f"{_change('duration_s', r['duration_a_s'], r['duration_b_s'], r['duration_delta_s']):<14}")
            if cmp["cost_recorded"]:
                line += f" {fmt_cost(r['cost_a_usd']):>10} {fmt_cost(r['cost_b_usd']):>10}"
            lines.append(line.rstrip())
    for key, name in (("only_in_a", "A"), ("only_in_b", "B")):
        if cmp[key]:
            lines.append(f"only in {name} ({len(cmp[key])}): {', '.join(cmp[key])}")
    return "\n".join(line.rstrip() for line in lines)
