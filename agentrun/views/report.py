"""A run report as text (``agentrun report show``) and as JSON or CSV exports.

Takes the dict of ``report_data.build_report``. The ``fmt_*`` helpers and
``gate_summary`` are shared with ``report_html`` and ``report_compare``.
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

from agentrun.spec.durations import format_duration
from agentrun.views.report_data import ANSI_ESCAPE, CONTROL_CHAR, FAILURE_STATUSES

CSV_COLUMNS = ("run_id", "ws_id", "status", "attempts", "wave", "started_at", "finished_at", "duration_s",
               "exit_code", "error", "integrated_commit", "integration_seq")


# --- text ------------------------------------------------------------------------

def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _clean(text: str | None, width: int | None = None) -> str:
    """One line of untrusted text fit for a terminal."""
    if not text:
        return ""
    line = CONTROL_CHAR.sub(" ", ANSI_ESCAPE.sub("", text.splitlines()[0] if text.splitlines() else ""))
    if width is not None and len(line) > width:
        line = line[: width - 3] + "..."
    return line


def fmt_path(path: list[str]) -> str:
    return " -> ".join(path) if len(path) <= 12 else " -> ".join(path[:5] + ["..."] + path[-5:])


def fmt_cost(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def fmt_int(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _retried(wss: list[dict[str, Any]]) -> str:
    shown = ", ".join(f"{w['ws_id']} {w['retries']}" for w in wss[:10])
    return shown + (", ..." if len(wss) > 10 else "")


def gate_summary(gates: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for g in gates:
        counts[g["status"]] = counts.get(g["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "none run"


def render_text(report: dict[str, Any]) -> str:
    """``agentrun report show``: summary, a row per workstream, failures with log tails, gates, cost."""
    run, wss = report["run"], report["workstreams"]
    ended = f"finished {fmt_time(run['finished_at'])}" if run["finished"] else "not finished (measured up to now)"
    attempts = run["attempts"]
    retried = [w for w in wss if w["retries"]]
    cp = run["critical_path"]
    lines = [
        f"run {run['id']}  {run['status']}",
        f"started        {fmt_time(run['created_at'])}, {ended}",
        f"wall time      {format_duration(run['wall_s'])}",
        f"total work     {format_duration(run['work_s'])} in {attempts} attempt{'s' if attempts != 1 else ''}",
        f"workers        {run['workers']}  (schedule {run['schedule']})",
        f"efficiency     {fmt_pct(run['efficiency'])}  (work / (wall time x workers))",
        f"critical path  {fmt_path(cp) if cp else '-'}  ({format_duration(run['critical_path_s'])}"
        + (f", {run['critical_path_s'] / run['wall_s'] * 100:.0f}% of wall time)" if run["wall_s"] else ")"),
        f"retries        {run['retries']}" + (f"  ({_retried(retried)})" if retried else ""),
        f"workstreams    {'  '.join(f'{s} {n}' for s, n in run['counts'].items()) or 'none'}",
        f"conflicts      {run['conflicts']}",
        f"gates          {gate_summary(report['gates'])}",
    ]
    if run["llm_recorded"]:
        lines.append(f"tokens         {fmt_int(run['prompt_tokens'])} prompt, {fmt_int(run['completion_tokens'])} "
                     f"completion, {fmt_cost(run['cost_usd'])}")
    width = min(40, max([10] + [len(w["ws_id"]) for w in wss]))
    lines += ["", f"{'workstream':<{width}} {'status':<11} {'tries':>5} {'retries':>7} {'wave':>4} "
                  f"{'duration':>8} {'cp':>2}  note"]
    for w in wss:
        lines.append(f"{w['ws_id']:<{width}} {w['status']:<11} {w['attempts']:>5} {w['retries']:>7} "
                     f"{w['wave']:>4} {format_duration(w['duration_s']):>8} {'*' if w['on_critical_path'] else '':>2}"
                     f"  {_clean(w['error'], 60)}".rstrip())
    failures = [w for w in wss if w["status"] in FAILURE_STATUSES]
    if failures:
        lines += ["", "failures"]
        for w in failures:
            lines.append(f"  {w['ws_id']}: {w['status']} after {w['attempts']} attempt"
                         f"{'s' if w['attempts'] != 1 else ''}: {_clean(w['error']) or '-'}")
            if w["log_path"]:
                lines.append(f"    log: {w['log_path']}")
            if w["log_tail"] is None:
                lines.append("    (log not found)" if w["log_path"] else "    (no log)")
            else:
                lines += [f"    | {line}" for line in w["log_tail"]] or ["    (the log is empty)"]
    conflicts = [w for w in wss if w["status"] == "conflict"]
    if conflicts:
        lines += ["", "conflicts"]
        for w in conflicts:
            lines.append(f"  {w['ws_id']}: files {', '.join(map(str, w['conflict_files'])) or '-'}; "
                         f"with {', '.join(map(str, w['conflict_with'])) or '-'}")
    bad_gates = [g for g in report["gates"] if g["status"] != "passed"]
    if bad_gates:
        lines += ["", "gates not passed"]
        for g in bad_gates:
            code = f" (exit {g['exit_code']})" if g["exit_code"] is not None else ""
            lines.append(f"  {g['ws_id']} #{g['attempt']} {g['phase']}: {_clean(g['gate'], 60)}: {g['status']}{code}")
    if report.get("budget_events"):
        lines += ["", "budget"]
        for e in report["budget_events"]:
            who = f" {e['ws_id']}" if e["ws_id"] else ""
            lines.append(f"  {fmt_time(e['ts'])} {e['type']} ({e['scope']}){who}: {_clean(e['detail'])}")
    if run["llm_recorded"]:
        lines += ["", "tokens and cost",
                  f"  {'workstream':<{width}} {'calls':>6} {'prompt':>12} {'completion':>12} {'cost':>10}"]
        for w in wss:
            lines.append(f"  {w['ws_id']:<{width}} {fmt_int(w['llm_calls']):>6} {fmt_int(w['prompt_tokens']):>12} "
                         f"{fmt_int(w['completion_tokens']):>12} {fmt_cost(w['cost_usd']):>10}")
        lines.append(f"  {'total':<{width}} {fmt_int(run['llm_calls']):>6} {fmt_int(run['prompt_tokens']):>12} "
                     f"{fmt_int(run['completion_tokens']):>12} {fmt_cost(run['cost_usd']):>10}")
    return "\n".join(line.rstrip() for line in lines)


# --- exports -----------------------------------------------------------------------

def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str) + "\n"


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    run_id = report["run"]["id"]
    return [{"run_id": run_id, **{c: w[c] for c in CSV_COLUMNS if c != "run_id"}} for w in report["workstreams"]]


def to_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(report):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()
