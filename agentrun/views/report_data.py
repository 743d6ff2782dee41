"""The report of a run as one dict: its rows read from the state DB and event log, then measured.

Two layers:

* ``collect`` reads every row a report needs from a (read-only) ``StateStore``
  in one snapshot, ``read_log_tail`` reads the end of a log file and
  ``budget_events`` the run's budget events from its event log;
* ``build_report`` is pure: rows in, one report dict out. That dict is also
  the JSON export, so its fields are a public format (see ``FIELDS_DOC``).

``load_report`` does both. The dict is rendered by ``report`` (text, JSON,
CSV) and ``report_html``, and compared by ``report_compare``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from agentrun.store.events import read_events
from agentrun.store.state import FINAL_STATUSES, StateStore
from agentrun.views.status import resolve_run

SCHEMA = "agentrun.report/1"
TAIL_LINES = 10
TAIL_BYTES = 64 * 1024
# Workstream statuses that count as a failure, whose log tail a report shows.
FAILURE_STATUSES = ("failed", "conflict")
STATUS_ORDER = ("done", "failed", "conflict", "blocked", "running", "retrying", "ready", "pending",
                "interrupted", "cancelled", "lost")
LLM_COLUMNS = ("prompt_tokens", "completion_tokens", "cost_usd")

FIELDS_DOC = """\
Report export formats (`agentrun report export RUN_ID --format json|csv`)

Times are Unix timestamps in seconds (float, UTC); durations are seconds
rounded to milliseconds; null (JSON) or an empty cell (CSV) means "not
known / not applicable". Waves are numbered from 1, as in `agentrun plan`.
A run that has not finished is measured up to `generated_at`.

JSON: one object, schema "agentrun.report/1". New fields may be added within
a schema version; fields are never removed or renamed without changing it.

  schema             "agentrun.report/1"
  generated_at       when the report was made
  run                object:
    id, status         run id; running, done, failed or interrupted
    source             the workstream file or directory the run was started from
    project_root       the project directory
    schedule           eager or waves
    workers            worker slots (--max-workers)
    created_at         when the run started
    finished_at        when it ended (null while running)
    finished           true once finished_at is set
    wall_s             created_at -> finished_at (or generated_at)
    work_s             sum of the durations of every attempt
    efficiency         work_s / (wall_s * workers), 0..1 (null if wall_s is 0)
    critical_path      workstream ids: the longest dependency chain, each
                       weighted by its actual duration (the successful attempt,
                       else the last attempt); workstreams never attempted are
                       left out
    critical_path_s    the length of that chain
    workstreams        number of workstreams in the run
    attempts           number of attempts
    retries            attempts beyond the first, summed over workstreams
    counts             {status: number of workstreams}
    conflicts          number of workstreams that ended in a merge conflict
    base_commit, integration_branch, into_branch
                       git integration (null when not in a git repository)
    llm_recorded       true when LLM usage was recorded for this run; then:
    prompt_tokens, completion_tokens, cost_usd, llm_calls
                       totals for the run (null when llm_recorded is false)
  workstreams        list, ordered by wave then id:
    ws_id, status      id; pending, ready, running, retrying, done, failed,
                       blocked, conflict, ...
    wave               1-based wave
    depends_on         ids of the workstreams of this run it depends on
    attempts           number of attempts made
    max_attempts       1 + retries allowed
    retries            attempts - 1 (0 when never attempted)
    started_at         start of the first attempt
    finished_at        when the workstream reached its final status
    duration_s         started_at -> finished_at: elapsed, retries and backoff
                       included
    work_s             sum of its attempts' durations
    path_s             duration of its deciding attempt (the successful one,
                       else the last): its weight on the critical path
    estimate_s         the planner's estimate when the run started
    on_critical_path   true when on run.critical_path
    exit_code, signal  of the last attempt
    error              the workstream's last error message
    log_path           log file of the last attempt (null when it succeeded
                       without printing anything: no log is kept then)
    log_tail           for failed and conflict workstreams: the last lines of
                       that log (null otherwise, or when the log is missing)
    integrated_commit, integration_seq
                       the commit that merged its result and its position in
                       the run's merge order (1-based)
    conflict_files, conflict_with
                       lists, for merge conflicts
    prompt_tokens, completion_tokens, cost_usd, llm_calls
                       LLM usage from the llm_calls table: sums of what the
                       provider reported (null unless run.llm_recorded, or
                       when no call reported that number; 0 for a workstream
                       that made no call)
  attempts           list, ordered by start time:
    ws_id, attempt     workstream id and attempt number (1-based)
    status             running, done, failed, timeout, cancelled, lost, conflict
    lane               worker slot (0-based) it ran in
    started_at, finished_at
    offset_s           started_at - run.created_at
    duration_s         finished_at (or generated_at while running) - started_at
    exit_code, signal, error, log_path (null: a silent success, no log kept)
  gates              list, in the order they ran: ws_id, attempt, phase
                     (baseline, verify, after_merge, agent), gate, status
                     (passed, failed, pre-existing, timeout), exit_code,
                     started_at, finished_at, duration_s
  budget_events      list of the run's budget_warning and budget_exceeded
                     events: ts, type, ws_id, scope (run or workstream), detail

CSV: one row per workstream, ordered by wave then id, with a header row and
exactly these columns (same meaning as the JSON fields of the same name):

  run_id, ws_id, status, attempts, wave, started_at, finished_at, duration_s,
  exit_code, error, integrated_commit, integration_seq

Compare (`agentrun report compare RUN_A RUN_B --format json`), schema
"agentrun.compare/1": a and b ({id, status, counts, critical_path});
cost_recorded (true when either run recorded LLM usage); totals ({metric:
{a, b, delta}} for wall_s, work_s, efficiency, critical_path_s, workstreams,
attempts, retries, and with cost_recorded prompt_tokens, completion_tokens,
cost_usd, llm_calls; delta = b - a); workstreams (those in both runs, by id:
status_a, status_b, status_changed, attempts_a, attempts_b, attempts_delta,
duration_a_s, duration_b_s, duration_delta_s, work_a_s, work_b_s,
work_delta_s, and with cost_recorded cost_a_usd, cost_b_usd, cost_delta_usd);
only_in_a and only_in_b (ids of workstreams in one run only).
"""


# --- reading ---------------------------------------------------------------------

@dataclass
class RunData:
    """Every row a report needs, as plain dicts."""

    run: dict[str, Any]
    workstreams: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
    gates: list[dict[str, Any]]
    llm: dict[str | None, dict[str, Any]] | None = None   # ws_id (None: not a workstream's) -> sums


def collect(store: StateStore, run_id: str | None) -> RunData:
    """Read a run (default: the latest) in one consistent snapshot; UsageError if unknown."""
    with store.snapshot():
        run = resolve_run(store, run_id)
        rid = run["id"]
        return RunData(
            run=dict(run),
            workstreams=[dict(r) for r in store.workstreams(rid)],
            attempts=[dict(r) for r in store.attempts(rid)],
            gates=[dict(r) for r in store.gate_results(rid)],
            llm=read_llm_usage(store.db, rid),
        )


def read_llm_usage(db: sqlite3.Connection, run_id: str) -> dict[str | None, dict[str, Any]] | None:
    """Token and cost sums per workstream from ``llm_calls``, if that table exists and has rows for the run."""
    if db.execute("SELECT name FROM sqlite_master WHERE name = 'llm_calls'").fetchone() is None:
        return None
    columns = {r[1] for r in db.execute("PRAGMA table_info(llm_calls)")}
    if "run_id" not in columns:
        return None
    # SUM of only NULLs is NULL: a cost no provider reported stays unknown, never $0.
    sums = ", ".join(f"SUM({c})" if c in columns else "NULL" for c in LLM_COLUMNS)
    group = "ws_id" if "ws_id" in columns else "NULL"
    rows = db.execute(f"SELECT {group}, {sums}, COUNT(*) FROM llm_calls WHERE run_id = ? GROUP BY 1",
                      (run_id,)).fetchall()
    if not rows:
        return None
    return {r[0]: {"prompt_tokens": r[1], "completion_tokens": r[2], "cost_usd": r[3], "llm_calls": r[4]}
            for r in rows}


# Also what ``report`` strips from one-line text it prints: log tails and errors are untrusted.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
CONTROL_CHAR = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def read_log_tail(path: str | Path | None, lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES) -> list[str] | None:
    """The last ``lines`` lines of a log, cleaned of terminal escapes; None if unreadable."""
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return None
    text = data.decode("utf-8", "replace")
    split = text.splitlines()
    if size > max_bytes and split:
        split = split[1:]  # the first line was cut
    while split and not split[-1].strip():
        split.pop()
    return [CONTROL_CHAR.sub("", ANSI_ESCAPE.sub("", line)).expandtabs(4) for line in split[-lines:]]


def log_tails(data: RunData, state_dir: Path | None = None, lines: int = TAIL_LINES) -> dict[str, list[str]]:
    """Log tails of the last attempt of each failed workstream.

    A log that moved with its state directory is looked up there too.
    """
    last: dict[str, dict[str, Any]] = {}
    for a in data.attempts:
        if a["ws_id"] not in last or a["attempt"] > last[a["ws_id"]]["attempt"]:
            last[a["ws_id"]] = a
    out: dict[str, list[str]] = {}
    for ws in data.workstreams:
        a = last.get(ws["ws_id"])
        if ws["status"] not in FAILURE_STATUSES or a is None:
            continue
        tail = read_log_tail(a["log_path"], lines)
        if tail is None and state_dir is not None:
            moved = Path(state_dir) / "runs" / data.run["id"] / "logs" / f"{ws['ws_id']}.{a['attempt']}.log"
            tail = read_log_tail(moved, lines)
        if tail is not None:
            out[ws["ws_id"]] = tail
    return out


def load_report(store: StateStore, run_id: str | None, *, now: float | None = None,
                tail_lines: int = TAIL_LINES) -> dict[str, Any]:
    """collect + log tails + build_report: the report of one run (default: the latest)."""
    data = collect(store, run_id)
    tails = log_tails(data, store.path.parent, tail_lines)
    report = build_report(data, now=time.time() if now is None else now, tails=tails)
    report["budget_events"] = budget_events(store.path.parent / "runs" / data.run["id"] / "events.jsonl")
    return report


def budget_events(path: Path) -> list[dict[str, Any]]:
    """The run's budget warnings and stops, from its event log (empty if there is none)."""
    try:
        records, _, _ = read_events(path)
    except OSError:
        return []
    return [{"ts": r.get("ts"), "type": r.get("type"), "ws_id": r.get("ws_id"), "scope": r.get("scope"),
             "detail": r.get("detail")} for r in records if r.get("type") in ("budget_warning", "budget_exceeded")]


# --- the report ------------------------------------------------------------------

def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _json_list(text: str | None) -> list:
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return [text]
    return value if isinstance(value, list) else [value]


def _depends_on(spec_json: str) -> list[str]:
    try:
        spec = json.loads(spec_json)
    except (TypeError, ValueError):
        return []
    deps = spec.get("depends_on") if isinstance(spec, dict) else None
    return [d for d in deps if isinstance(d, str)] if isinstance(deps, list) else []


def critical_path(deps: Mapping[str, Iterable[str]], weight: Mapping[str, float]) -> tuple[list[str], float]:
    """The longest path through the DAG ``deps`` (node -> what it depends on), by node ``weight``.

    Only nodes in ``weight`` take part. Returned in dependency order (first
    the one with no dependency). Ties go to the smaller id, so the answer is
    deterministic. A cycle (which validation rules out) is broken, not looped.
    """
    nodes = sorted(weight)
    best: dict[str, float] = {}
    prev: dict[str, str | None] = {}
    visiting: set[str] = set()

    def visit(start: str) -> None:
        stack = [start]
        while stack:
            node = stack[-1]
            if node in best:
                stack.pop()
                continue
            visiting.add(node)
            pending = [d for d in sorted(deps.get(node, ())) if d in weight and d not in best
                       and d not in visiting]
            if pending:
                stack.extend(reversed(pending))
                continue
            stack.pop()
            visiting.discard(node)
            tail, pick = 0.0, None
            for d in sorted(deps.get(node, ())):
                if d in best and (pick is None or best[d] > tail):
                    tail, pick = best[d], d
            best[node] = weight[node] + tail
            prev[node] = pick

    for node in nodes:
        visit(node)
    if not best:
        return [], 0.0
    end = min(best, key=lambda n: (-best[n], n))
    path = []
    node: str | None = end
    while node is not None:
        path.append(node)
        node = prev[node]
    path.reverse()
    return path, best[end]


def build_report(data: RunData, *, now: float, tails: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
    """The report dict of one run: pure, from ``collect``'s rows. ``now`` measures unfinished work."""
    tails = tails or {}
    run = data.run
    start = run["created_at"]
    end = run["finished_at"] if run["finished_at"] is not None else now
    wall = max(0.0, end - start)
    workers = run["max_workers"] or 1
    ws_ids = {w["ws_id"] for w in data.workstreams}
    llm = data.llm

    by_ws: dict[str, list[dict[str, Any]]] = {}
    attempts_out = []
    for a in sorted(data.attempts, key=lambda a: (a["started_at"], a["id"])):
        finished = a["finished_at"]
        duration = max(0.0, (finished if finished is not None else now) - a["started_at"])
        by_ws.setdefault(a["ws_id"], []).append({**a, "_duration": duration})
        attempts_out.append({
            "ws_id": a["ws_id"], "attempt": a["attempt"], "status": a["status"], "lane": a["lane"],
            "started_at": a["started_at"], "finished_at": finished,
            "offset_s": _r(a["started_at"] - start), "duration_s": _r(duration),
            "exit_code": a["exit_code"], "signal": a["signal"], "error": a["error"], "log_path": a["log_path"],
        })
    for rows in by_ws.values():
        rows.sort(key=lambda a: a["attempt"])

    deps = {w["ws_id"]: [d for d in _depends_on(w["spec"]) if d in ws_ids] for w in data.workstreams}
    path_weight: dict[str, float] = {}
    for ws_id, rows in by_ws.items():
        if ws_id in ws_ids:
            done = [a for a in rows if a["status"] == "done"]
            path_weight[ws_id] = (done[-1] if done else rows[-1])["_duration"]
    path, path_len = critical_path(deps, path_weight)
    on_path = set(path)

    workstreams_out = []
    counts: dict[str, int] = {}
    for w in sorted(data.workstreams, key=lambda w: (w["wave"], w["ws_id"])):
        ws_id, status = w["ws_id"], w["status"]
        counts[status] = counts.get(status, 0) + 1
        rows = by_ws.get(ws_id, [])
        last = rows[-1] if rows else None
        finished = w["finished_at"]
        stop = finished
        if stop is None and rows:
            if run["finished_at"] is None and status not in FINAL_STATUSES:
                stop = now
            else:
                stop = max(a["finished_at"] if a["finished_at"] is not None else now for a in rows)
        duration = max(0.0, stop - w["started_at"]) if w["started_at"] is not None and stop is not None else None
        usage = llm.get(ws_id) if llm is not None else None
        workstreams_out.append({
            "ws_id": ws_id, "status": status, "wave": w["wave"] + 1, "depends_on": deps[ws_id],
            "attempts": len(rows), "max_attempts": w["max_attempts"], "retries": max(0, len(rows) - 1),
            "started_at": w["started_at"], "finished_at": finished, "duration_s": _r(duration),
            "work_s": _r(sum(a["_duration"] for a in rows)), "path_s": _r(path_weight.get(ws_id)),
            "estimate_s": w["estimate"], "on_critical_path": ws_id in on_path,
            "exit_code": last["exit_code"] if last else None, "signal": last["signal"] if last else None,
            "error": w["error"], "log_path": last["log_path"] if last else None,
            "log_tail": list(tails[ws_id]) if ws_id in tails else None,
            "integrated_commit": w.get("integrated_commit"), "integration_seq": w.get("integration_seq"),
            "conflict_files": _json_list(w.get("conflict_files")),
            "conflict_with": _json_list(w.get("conflict_with")),
            **_usage(usage, llm is not None),
        })

    work = sum(a["_duration"] for rows in by_ws.values() for a in rows)
    totals = None
    if llm is not None:
        totals = {k: _sum(u[k] for u in llm.values()) for k in (*LLM_COLUMNS, "llm_calls")}
    gates_out = [{"ws_id": g["ws_id"], "attempt": g["attempt"], "phase": g["phase"], "gate": g["gate"],
                  "status": g["status"], "exit_code": g["exit_code"], "started_at": g["started_at"],
                  "finished_at": g["finished_at"], "duration_s": _r(g["finished_at"] - g["started_at"])}
                 for g in data.gates]
    return {
        "schema": SCHEMA,
        "generated_at": now,
        "run": {
            "id": run["id"], "status": run["status"], "source": run["source"],
            "project_root": run["project_root"], "schedule": run["schedule"], "workers": workers,
            "created_at": start, "finished_at": run["finished_at"], "finished": run["finished_at"] is not None,
            "wall_s": _r(wall), "work_s": _r(work),
            "efficiency": _r(work / (wall * workers), 4) if wall > 0 else None,
            "critical_path": path, "critical_path_s": _r(path_len),
            "workstreams": len(data.workstreams), "attempts": len(data.attempts),
            "retries": sum(w["retries"] for w in workstreams_out),
            "counts": {s: counts[s] for s in sorted(counts, key=_status_key)},
            "conflicts": counts.get("conflict", 0),
            "base_commit": run.get("base_commit"), "integration_branch": run.get("integration_branch"),
            "into_branch": run.get("into_branch"), "llm_recorded": llm is not None,
            **_usage(totals, llm is not None),
        },
        "workstreams": workstreams_out,
        "attempts": attempts_out,
        "gates": gates_out,
    }


def _sum(values: Iterable[Any]) -> Any:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _usage(usage: Mapping[str, Any] | None, recorded: bool) -> dict[str, Any]:
    """LLM usage fields: all None when not recorded; zeros for a workstream that made no call."""
    keys = (*LLM_COLUMNS, "llm_calls")
    if not recorded:
        return {k: None for k in keys}
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "llm_calls": 0}
    return {k: usage.get(k) for k in keys}


def _status_key(status: str) -> tuple[int, str]:
    return (STATUS_ORDER.index(status) if status in STATUS_ORDER else len(STATUS_ORDER), status)
