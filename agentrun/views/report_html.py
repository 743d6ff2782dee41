"""A run report as one self-contained HTML page: inline CSS and SVG, no scripts, no external assets.

``render_html`` takes the dict of ``report_data.build_report`` and returns the
page: a Gantt timeline of attempts by worker lane, the dependency graph by
wave with the actual critical path highlighted, and the tables of
``agentrun report show``. Every piece of text from the run is escaped.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from agentrun.spec.durations import format_duration
from agentrun.views.report import fmt_cost, fmt_int, fmt_path, fmt_pct, fmt_time, gate_summary
from agentrun.views.report_data import FAILURE_STATUSES

# Attempt outcomes (bars) and workstream statuses (graph nodes).
BAR_COLORS = {"done": "#2e9e4f", "failed": "#d64541", "timeout": "#ef8a17", "cancelled": "#9aa0a6",
              "lost": "#9aa0a6", "running": "#3b7ddd", "conflict": "#8e44ad"}
NODE_COLORS = {"done": "#d7f2de", "failed": "#f8d7d5", "conflict": "#ead8f2", "blocked": "#e9e9e9",
               "running": "#d9e6fa", "retrying": "#fde7c9", "ready": "#eef3fb", "pending": "#f6f6f6",
               "interrupted": "#e9e9e9", "lost": "#e9e9e9"}
OTHER_BAR = "#6b7280"
CRITICAL = "#d35400"

PLOT_W = 960        # Gantt: pixels for the time axis
LANE_LABEL_W = 84
ROW_H = 26
BAR_H = 18
AXIS_H = 26
NODE_W = 156
NODE_H = 30
COL_GAP = 64
ROW_GAP = 12

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       margin: 0 auto; padding: 16px 24px 48px; max-width: 1200px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 14px 0 2px; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.muted { color: #656d76; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 13px; font-weight: 600;
         color: #fff; background: #6b7280; vertical-align: middle; }
.badge.done { background: #2e9e4f; } .badge.failed { background: #d64541; }
.badge.running { background: #3b7ddd; } .badge.interrupted { background: #9aa0a6; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { text-align: left; padding: 3px 10px 3px 0; vertical-align: top; }
th { font-weight: 600; border-bottom: 1px solid #d0d7de; }
tr.cp td:first-child { font-weight: 600; }
td.num, th.num { text-align: right; }
table.kv th { border: 0; padding-right: 16px; font-weight: 500; color: #656d76; }
.st { font-weight: 600; } .st.done { color: #1e7a3a; } .st.blocked { color: #656d76; }
.st.failed, .st.conflict, .st.timeout { color: #b3261e; }
pre.tail { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 10px;
           overflow-x: auto; margin: 4px 0 14px; }
.scroll { overflow-x: auto; border: 1px solid #d0d7de; border-radius: 6px; padding: 6px; }
.legend span { display: inline-block; margin-right: 14px; font-size: 13px; }
.legend i { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 4px;
            vertical-align: -1px; }
svg text { font: 11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
svg .bar-label { fill: #fff; pointer-events: none; }
svg .axis { fill: #656d76; }
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _st(status: str) -> str:
    return f'<span class="st {_e(status)}">{_e(status)}</span>'


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def _tick_label(t: float, step: float) -> str:
    if step < 1:
        return f"{t:.{max(1, -math.floor(math.log10(step)))}f}s"
    return format_duration(t) if t >= 10 else f"{t:.0f}s"


def gantt_svg(report: dict[str, Any]) -> str:
    """Attempts as bars, one row per worker lane, x = seconds since the run started."""
    run, attempts = report["run"], report["attempts"]
    lanes = sorted({a["lane"] for a in attempts if a["lane"] is not None} | set(range(run["workers"])))
    rows: list[Any] = list(lanes) + ([None] if any(a["lane"] is None for a in attempts) else [])
    index = {lane: i for i, lane in enumerate(rows)}
    ends = [max(0.0, a["offset_s"] or 0.0) + (a["duration_s"] or 0.0) for a in attempts]
    span = max([run["wall_s"] or 0.0, *ends, 0.001])
    scale = PLOT_W / span
    width = LANE_LABEL_W + PLOT_W + 24
    height = AXIS_H + len(rows) * ROW_H + 6
    out = [f'<svg class="gantt" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="timeline of {len(attempts)} attempts">']
    for i, lane in enumerate(rows):
        y = AXIS_H + i * ROW_H
        fill = "#f6f8fa" if i % 2 == 0 else "#ffffff"
        out.append(f'<rect x="{LANE_LABEL_W}" y="{y}" width="{PLOT_W}" height="{ROW_H}" fill="{fill}"/>')
        name = f"worker {lane + 1}" if lane is not None else "lane ?"
        out.append(f'<text class="axis" x="4" y="{y + ROW_H / 2 + 4:.1f}">{_e(name)}</text>')
    step = _nice_step(span / 8)
    ticks = int(span / step + 1e-9)
    for k in range(ticks + 1):
        t = k * step
        x = LANE_LABEL_W + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{AXIS_H - 4}" x2="{x:.1f}" y2="{height - 6}" stroke="#d0d7de" '
                   f'stroke-width="1"/>')
        out.append(f'<text class="axis" x="{x:.1f}" y="{AXIS_H - 9}" text-anchor="middle">'
                   f'{_e(_tick_label(t, step))}</text>')
    if not run["finished"]:
        x = LANE_LABEL_W + (run["wall_s"] or 0.0) * scale
        out.append(f'<line class="now" x1="{x:.1f}" y1="{AXIS_H - 4}" x2="{x:.1f}" y2="{height - 6}" '
                   f'stroke="{BAR_COLORS["running"]}" stroke-width="1.5" stroke-dasharray="4 3"/>')
    for a in attempts:
        y = AXIS_H + index[a["lane"]] * ROW_H + (ROW_H - BAR_H) / 2
        x = LANE_LABEL_W + max(0.0, a["offset_s"] or 0.0) * scale
        w = max(2.0, (a["duration_s"] or 0.0) * scale)
        color = BAR_COLORS.get(a["status"], OTHER_BAR)
        tip = [f"{a['ws_id']} attempt {a['attempt']}: {a['status']}",
               f"start +{format_duration(a['offset_s'])}, took {format_duration(a['duration_s'])}"]
        if a["exit_code"] is not None:
            tip.append(f"exit code {a['exit_code']}")
        if a["error"]:
            tip.append(str(a["error"]))
        out.append(f'<rect class="bar {_e(a["status"])}" data-attempt="{_e(a["ws_id"])}:{a["attempt"]}" '
                   f'data-status="{_e(a["status"])}" x="{x:.2f}" y="{y:.1f}" width="{w:.2f}" height="{BAR_H}" '
                   f'rx="3" fill="{color}"><title>{_e(chr(10).join(tip))}</title></rect>')
        label = a["ws_id"] if a["attempt"] == 1 else f"{a['ws_id']} #{a['attempt']}"
        if w > 7 * len(label) + 8:
            out.append(f'<text class="bar-label" x="{x + 4:.2f}" y="{y + BAR_H / 2 + 4:.1f}">{_e(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _order_waves(wss: list[dict[str, Any]]) -> list[list[str]]:
    """Columns of ids by wave; inside a column, by the mean row of their dependencies, then id."""
    by_wave: dict[int, list[dict[str, Any]]] = {}
    for w in wss:
        by_wave.setdefault(w["wave"], []).append(w)
    row_of: dict[str, int] = {}
    columns = []
    for wave in sorted(by_wave):
        def key(w: dict[str, Any]) -> tuple[float, str]:
            placed = [row_of[d] for d in w["depends_on"] if d in row_of]
            return (sum(placed) / len(placed) if placed else -1.0, w["ws_id"])
        column = [w["ws_id"] for w in sorted(by_wave[wave], key=key)]
        for i, ws_id in enumerate(column):
            row_of[ws_id] = i
        columns.append(column)
    return columns


def dag_svg(report: dict[str, Any]) -> str:
    """The dependency graph, one column per wave, the actual critical path highlighted."""
    wss = {w["ws_id"]: w for w in report["workstreams"]}
    columns = _order_waves(report["workstreams"])
    path = report["run"]["critical_path"]
    cp_edges = set(zip(path, path[1:]))
    top = 24
    pos: dict[str, tuple[float, float]] = {}
    for c, column in enumerate(columns):
        for r, ws_id in enumerate(column):
            pos[ws_id] = (8 + c * (NODE_W + COL_GAP), top + r * (NODE_H + ROW_GAP))
    width = 16 + max(1, len(columns)) * (NODE_W + COL_GAP) - COL_GAP
    height = top + max([len(c) for c in columns] + [1]) * (NODE_H + ROW_GAP) + 4
    out = [f'<svg class="dag" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="dependency graph of {len(wss)} workstreams">',
           '<defs>'
           '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
           'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#8c959f"/></marker>'
           '<marker id="arrow-cp" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="11" markerHeight="11" '
           f'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{CRITICAL}"/></marker>'
           '</defs>']
    for c, column in enumerate(columns):
        wave = wss[column[0]]["wave"] if column else c + 1
        out.append(f'<text class="axis" x="{8 + c * (NODE_W + COL_GAP)}" y="14">wave {_e(wave)}</text>')
    edges_normal, edges_cp = [], []
    for ws_id, w in wss.items():
        for dep in w["depends_on"]:
            if dep not in pos or ws_id not in pos:
                continue
            x1, y1 = pos[dep][0] + NODE_W, pos[dep][1] + NODE_H / 2
            x2, y2 = pos[ws_id][0], pos[ws_id][1] + NODE_H / 2
            bend = max(24.0, abs(x2 - x1) / 2)
            d = f"M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
            critical = (dep, ws_id) in cp_edges
            edge = (f'<path class="edge{" critical" if critical else ""}" data-edge="{_e(dep + "->" + ws_id)}" '
                    f'd="{d}" fill="none" stroke="{CRITICAL if critical else "#8c959f"}" '
                    f'stroke-width="{3 if critical else 1.2}" '
                    f'marker-end="url(#{"arrow-cp" if critical else "arrow"})"/>')
            (edges_cp if critical else edges_normal).append(edge)
    out += edges_normal + edges_cp  # critical edges drawn last, on top
    on_path = set(path)
    for ws_id, (x, y) in pos.items():
        w = wss[ws_id]
        critical = ws_id in on_path
        label = ws_id if len(ws_id) <= 21 else ws_id[:20] + "\u2026"
        tip = (f"{ws_id}: {w['status']}, {w['attempts']} attempt{'s' if w['attempts'] != 1 else ''}, "
               f"{format_duration(w['duration_s'])}" + (" (critical path)" if critical else ""))
        if w["depends_on"]:
            tip += "\ndepends on " + ", ".join(w["depends_on"])
        out.append(f'<g class="node{" critical" if critical else ""}" data-ws="{_e(ws_id)}">'
                   f'<title>{_e(tip)}</title>'
                   f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="5" '
                   f'fill="{NODE_COLORS.get(w["status"], "#f6f6f6")}" '
                   f'stroke="{CRITICAL if critical else "#8c959f"}" stroke-width="{2.5 if critical else 1}"/>'
                   f'<text x="{x + 8}" y="{y + NODE_H / 2 + 4}">{_e(label)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _legend() -> str:
    items = [("done", "done"), ("failed", "failed"), ("timeout", "timeout"), ("cancelled", "cancelled / lost"),
             ("running", "running"), ("conflict", "conflict")]
    return ('<p class="legend">' + "".join(f'<span><i style="background:{BAR_COLORS[k]}"></i>{_e(name)}</span>'
                                           for k, name in items) + "</p>")


def _summary_table(report: dict[str, Any]) -> str:
    run = report["run"]
    cp = run["critical_path"]
    rows = [
        ("status", _st(run["status"])),
        ("started", _e(fmt_time(run["created_at"]))),
        ("finished", _e(fmt_time(run["finished_at"])) if run["finished"] else "not finished (measured up to "
                                                                           f"{_e(fmt_time(report['generated_at']))})"),
        ("wall time", _e(format_duration(run["wall_s"]))),
        ("total work", _e(f"{format_duration(run['work_s'])} in {run['attempts']} attempts")),
        ("workers", _e(f"{run['workers']} (schedule {run['schedule']})")),
        ("parallel efficiency", _e(fmt_pct(run["efficiency"])) + ' <span class="muted">work / (wall time '
                                                                '&times; workers)</span>'),
        ("critical path", f"<code>{_e(fmt_path(cp) or '-')}</code> "
                          f"({_e(format_duration(run['critical_path_s']))})"),
        ("retries", _e(run["retries"])),
        ("workstreams", _e("  ".join(f"{s} {n}" for s, n in run["counts"].items()) or "none")),
        ("conflicts", _e(run["conflicts"])),
        ("gates", _e(gate_summary(report["gates"]))),
        ("source", f"<code>{_e(run['source'])}</code>"),
    ]
    if run["integration_branch"]:
        rows.append(("integration branch", f"<code>{_e(run['integration_branch'])}</code>"))
    if run["llm_recorded"]:
        usage = (f"{fmt_int(run['prompt_tokens'])} prompt, {fmt_int(run['completion_tokens'])} completion, "
                 f"{fmt_cost(run['cost_usd'])}")
        rows.append(("tokens and cost", _e(usage)))
    return ('<table class="kv"><tbody>' + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
            + "</tbody></table>")


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           row_classes: list[str] | None = None) -> str:
    cls = lambda i: ' class="num"' if i in numeric else ""  # noqa: E731
    out = ["<table><thead><tr>", "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(head)),
           "</tr></thead><tbody>"]
    for n, row in enumerate(rows):
        rc = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        out.append(f"<tr{rc}>" + "".join(f"<td{cls(i)}>{cell}</td>" for i, cell in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(report: dict[str, Any]) -> str:
    run, wss = report["run"], report["workstreams"]
    title = f"agentrun report {run['id']}"
    body = [f'<header><h1>Run <code>{_e(run["id"])}</code> <span class="badge {_e(run["status"])}">'
            f'{_e(run["status"])}</span></h1>'
            f'<p class="muted">report generated {_e(fmt_time(report["generated_at"]))} &middot; '
            f'{_e(report["schema"])}</p></header>',
            '<section id="summary"><h2>Summary</h2>', _summary_table(report), "</section>",
            f'<section id="timeline"><h2>Timeline</h2><p class="muted">One row per worker; x is time since the '
            f'run started. Hover a bar for details.</p>{_legend()}<div class="scroll">{gantt_svg(report)}</div>'
            "</section>",
            '<section id="graph"><h2>Dependency graph</h2><p class="muted">Columns are waves; the actual critical '
            f'path (by measured durations) is drawn in <span style="color:{CRITICAL};font-weight:600">orange'
            f'</span>.</p><div class="scroll">{dag_svg(report)}</div></section>']

    ws_rows = [[f"<code>{_e(w['ws_id'])}</code>", _st(w["status"]), _e(w["attempts"]), _e(w["retries"]),
                _e(w["wave"]), _e(format_duration(w["duration_s"])), _e(format_duration(w["work_s"])),
                "&#9679;" if w["on_critical_path"] else "", _e(w["error"] or "")] for w in wss]
    body += ['<section id="workstreams"><h2>Workstreams</h2>',
             _table(["workstream", "status", "attempts", "retries", "wave", "duration", "work", "critical path",
                     "error"], ws_rows, {2, 3, 4, 5, 6},
                    ["cp" if w["on_critical_path"] else "" for w in wss]),
             "</section>"]

    failures = [w for w in wss if w["status"] in FAILURE_STATUSES]
    if failures:
        body.append('<section id="failures"><h2>Failures</h2>')
        for w in failures:
            body.append(f'<h3><code>{_e(w["ws_id"])}</code> {_st(w["status"])} after {_e(w["attempts"])} '
                        f'attempt{"s" if w["attempts"] != 1 else ""}: {_e(w["error"] or "-")}</h3>')
            if w["log_path"]:
                body.append(f'<p class="muted">log: <code>{_e(w["log_path"])}</code></p>')
            if w["log_tail"] is not None:
                body.append(f'<pre class="tail">{_e(chr(10).join(w["log_tail"]))}</pre>')
            else:
                body.append('<p class="muted">(log not found)</p>')
        body.append("</section>")

    conflicts = [w for w in wss if w["status"] == "conflict"]
    if conflicts:
        body += ['<section id="conflicts"><h2>Conflicts</h2>',
                 _table(["workstream", "files", "conflicts with"],
                        [[f"<code>{_e(w['ws_id'])}</code>", _e(", ".join(map(str, w["conflict_files"]))),
                          _e(", ".join(map(str, w["conflict_with"])))] for w in conflicts]),
                 "</section>"]

    if report["gates"]:
        body += ['<section id="gates"><h2>Gates</h2>', f'<p>{_e(gate_summary(report["gates"]))}</p>',
                 _table(["workstream", "attempt", "phase", "gate", "status", "exit code", "took"],
                        [[f"<code>{_e(g['ws_id'])}</code>", _e(g["attempt"]), _e(g["phase"]),
                          f"<code>{_e(g['gate'])}</code>", _st(g["status"]), _e(g["exit_code"]),
                          _e(format_duration(g["duration_s"]))] for g in report["gates"]], {1, 5, 6}),
                 "</section>"]

    if run["llm_recorded"]:
        rows = [[f"<code>{_e(w['ws_id'])}</code>", _e(fmt_int(w["llm_calls"])), _e(fmt_int(w["prompt_tokens"])),
                 _e(fmt_int(w["completion_tokens"])), _e(fmt_cost(w["cost_usd"]))] for w in wss]
        rows.append(["<strong>total</strong>", _e(fmt_int(run["llm_calls"])), _e(fmt_int(run["prompt_tokens"])),
                     _e(fmt_int(run["completion_tokens"])), _e(fmt_cost(run["cost_usd"]))])
        body += ['<section id="cost"><h2>Tokens and cost</h2>',
                 _table(["workstream", "calls", "prompt tokens", "completion tokens", "cost"], rows, {1, 2, 3, 4}),
                 "</section>"]

    att_rows = [[f"<code>{_e(a['ws_id'])}</code>", _e(a["attempt"]), _st(a["status"]),
                 _e("-" if a["lane"] is None else a["lane"] + 1), _e("+" + format_duration(a["offset_s"])),
                 _e(format_duration(a["duration_s"])), _e(a["exit_code"]), _e(a["error"] or "")]
                for a in report["attempts"]]
    body += [f'<section id="attempts"><h2>Attempts</h2><details><summary>{len(att_rows)} attempts</summary>',
             _table(["workstream", "attempt", "status", "worker", "start", "took", "exit code", "error"],
                    att_rows, {1, 3, 4, 5, 6}),
             "</details></section>"]

    return ("<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
