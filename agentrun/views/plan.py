"""Plans as text, JSON, Graphviz dot and Mermaid."""

from __future__ import annotations

import json

from agentrun.spec.durations import format_duration
from agentrun.plan.planner import Plan
from agentrun.plan.scheduler import simulate

FORMATS = ("text", "json", "dot", "mermaid")


def plan_summary(plan: Plan, workers: int) -> dict:
    return {
        "workers": workers,
        "workstreams": [
            {"id": w, "wave": plan.wave_of[w] + 1, "estimate_s": plan.estimates[w],
             "estimate_source": plan.estimate_source[w], "depends_on": list(plan.deps[w]),
             "remaining_path_s": plan.rank[w], "priority": plan.workstreams[w].priority}
            for w in sorted(plan.workstreams, key=lambda w: (plan.wave_of[w], w))
        ],
        "waves": [list(wave) for wave in plan.waves],
        "critical_path": plan.critical_path,
        "critical_path_s": plan.critical_length,
        "total_work_s": plan.total_work,
        "estimated_makespan_s": simulate(plan, workers),
        "lower_bound_s": plan.lower_bound(workers),
        "best_speedup": plan.best_speedup(workers),
        "predicted_conflicts": [{"a": a, "b": b, "files_a": pa, "files_b": pb}
                                for a, b, pa, pb in plan.conflicts],
        "assumed_done": {w: list(d) for w, d in plan.ignored_deps.items()},
    }


def render_plan(plan: Plan, workers: int, fmt: str, title: str = "", llm=None, root=None) -> str:
    costs = _llm_estimates(plan, llm, root) if llm is not None and root is not None else {}
    if fmt == "json":
        summary = plan_summary(plan, workers)
        if costs:
            summary["llm_estimates"] = {w: {"model": m, "prompt_tokens": p, "completion_tokens": c, "cost_usd": usd}
                                        for w, (m, p, c, usd) in costs.items()}
        return json.dumps(summary, indent=2)
    if fmt == "dot":
        return _dot(plan)
    if fmt == "mermaid":
        return _mermaid(plan)
    text = _text(plan, workers, title)
    if costs:
        text += "\n" + _costs_text(costs, plan)
    return text


def _llm_estimates(plan: Plan, llm, root) -> dict:
    from agentrun.views.models import estimate_call  # only plans with agent workstreams need it
    out = {}
    for w, ws in sorted(plan.workstreams.items()):
        if ws.agent:
            prompt, completion, cost = estimate_call(ws, llm, root)
            out[w] = (ws.model, prompt, completion, cost)
    return out


def _costs_text(costs: dict, plan: Plan) -> str:
    lines = ["model calls (one round each; every repair adds about one more):"]
    total, unknown = 0.0, []
    for w, (model, prompt, completion, cost) in costs.items():
        shown = "unknown price" if cost is None else f"${cost:.4f}"
        lines.append(f"  {w:<28} {model:<16} ~{prompt} in / ~{completion} out  {shown}")
        if cost is None:
            unknown.append(w)
        else:
            total += cost * (1 + plan.workstreams[w].max_repairs / 2)
    lines.append(f"estimated cost with half the repairs used: ${total:.4f}"
                 + (f" (+ unknown for {', '.join(unknown)})" if unknown else ""))
    return "\n".join(lines)


def _est(plan: Plan, w: str) -> str:
    mark = {"history": "h", "default": "?"}.get(plan.estimate_source[w], "")
    return format_duration(plan.estimates[w]) + mark


def _text(plan: Plan, workers: int, title: str) -> str:
    n = len(plan.workstreams)
    out = [f"Plan{' for ' + title if title else ''}: {n} workstream{'s' if n != 1 else ''}, "
           f"{len(plan.waves)} wave{'s' if len(plan.waves) != 1 else ''}, {workers} worker{'s' if workers != 1 else ''}"]
    for index, wave in enumerate(plan.waves, start=1):
        shown = ", ".join(f"{w} ({_est(plan, w)})" for w in wave[:40])
        more = f", ... {len(wave) - 40} more" if len(wave) > 40 else ""
        out.append(f"  wave {index}: {shown}{more}")
    cp = plan.critical_path
    path = " -> ".join(cp) if len(cp) <= 12 else " -> ".join(cp[:5] + ["..."] + cp[-5:])
    out.append(f"critical path: {path}  ({format_duration(plan.critical_length)})")
    lb = plan.lower_bound(workers)
    out.append(f"total work: {format_duration(plan.total_work)}   estimated makespan at {workers} workers: "
               f"{format_duration(simulate(plan, workers))}")
    out.append(f"lower bound: max(work/{workers} = {format_duration(plan.total_work / workers)}, critical path = "
               f"{format_duration(plan.critical_length)}) = {format_duration(lb)}   best speedup: "
               f"{plan.best_speedup(workers):.2f}x")
    if plan.conflicts:
        out.append(f"predicted conflicts ({len(plan.conflicts)}, never run at the same time):")
        for a, b, pa, pb in plan.conflicts:
            out.append(f"  {a} <-> {b}  ({pa} overlaps {pb})")
    if plan.ignored_deps:
        out.append("dependencies outside the selection, assumed done: "
                   + "; ".join(f"{w}: {', '.join(d)}" for w, d in sorted(plan.ignored_deps.items())))
    sources = set(plan.estimate_source.values())
    if sources - {"spec"}:
        out.append("estimates: h = median of past runs, ? = no estimate (1s assumed)")
    return "\n".join(out)


def _dot(plan: Plan) -> str:
    crit = set(zip(plan.critical_path, plan.critical_path[1:]))
    on_path = set(plan.critical_path)
    lines = ["digraph agentrun {", "  rankdir=LR;", "  node [shape=box, fontname=\"Helvetica\"];"]
    for w in sorted(plan.workstreams):
        style = ", color=red, penwidth=2" if w in on_path else ""
        lines.append(f"  \"{w}\" [label=\"{w}\\n{_est(plan, w)}\"{style}];")
    for w in sorted(plan.workstreams):
        for d in plan.deps[w]:
            style = " [color=red, penwidth=2]" if (d, w) in crit else ""
            lines.append(f"  \"{d}\" -> \"{w}\"{style};")
    for a, b, _, _ in plan.conflicts:
        lines.append(f"  \"{a}\" -> \"{b}\" [dir=none, style=dashed, color=orange, constraint=false];")
    lines.append("}")
    return "\n".join(lines)


def _mermaid_id(w: str) -> str:
    # Injective, so "a-b", "a_b" and "a.b" stay three nodes: "_" -> "__", others -> "_<hex>".
    return "n_" + "".join(c if c.isascii() and c.isalnum() else "__" if c == "_" else f"_{ord(c):x}" for c in w)


def _mermaid(plan: Plan) -> str:
    lines = ["graph LR"]
    for w in sorted(plan.workstreams):
        lines.append(f"  {_mermaid_id(w)}[\"{w} ({_est(plan, w)})\"]")
    for w in sorted(plan.workstreams):
        for d in plan.deps[w]:
            lines.append(f"  {_mermaid_id(d)} --> {_mermaid_id(w)}")
    for a, b, _, _ in plan.conflicts:
        lines.append(f"  {_mermaid_id(a)} -. conflict .- {_mermaid_id(b)}")
    if plan.critical_path:
        lines.append("  classDef critical stroke:#d00,stroke-width:3px")
        lines.append("  class " + ",".join(_mermaid_id(w) for w in plan.critical_path) + " critical")
    return "\n".join(lines)
