"""Reading a run back from the state DB: ``status`` and ``logs``."""

from __future__ import annotations

import time
from pathlib import Path

from .durations import format_duration
from .errors import UsageError
from .layout import Layout
from .state import StateStore

STATUS_ORDER = ("running", "ready", "retrying", "pending", "done", "failed", "conflict", "blocked",
                "interrupted", "lost")


def open_readonly(layout: Layout) -> StateStore:
    return StateStore(layout.db_path, readonly=True)


def resolve_run(store: StateStore, run_id: str | None):
    row = store.run(run_id) if run_id else store.latest_run()
    if row is None:
        if run_id:
            known = [r["id"] for r in store.runs(5)]
            hint = f"; recent runs: {', '.join(known)}" if known else ""
            raise UsageError(f"unknown run id '{run_id}'{hint}")
        raise UsageError(f"no runs recorded in {store.path}; start one with `agentrun run`")
    return row


def render_status(store: StateStore, run_id: str | None) -> str:
    with store.snapshot():
        run = resolve_run(store, run_id)
        rows = store.workstreams(run["id"])
        counts = store.counts(run["id"])
    end = run["finished_at"] or time.time()
    head = (f"run {run['id']}  {run['status']}  {format_duration(end - run['created_at'])}  "
            f"workers {run['max_workers']}  schedule {run['schedule']}")
    count_line = "  ".join(f"{s} {counts[s]}" for s in STATUS_ORDER if counts.get(s))
    lines = [head, count_line, "", f"{'workstream':<32} {'status':<11} {'try':>3} {'wave':>4} {'time':>8}  note"]
    for r in rows:
        took = None
        if r["started_at"]:
            took = (r["finished_at"] or time.time()) - r["started_at"]
        note = (r["error"] or "").splitlines()[0][:60] if r["error"] else ""
        lines.append(f"{r['ws_id']:<32} {r['status']:<11} {r['attempt']:>3} {r['wave'] + 1:>4} "
                     f"{format_duration(took):>8}  {note}")
    return "\n".join(lines)


def log_path(store: StateStore, run_id: str, ws_id: str, attempt: int | None) -> Path | None:
    """The log file of an attempt (the latest by default); None when it printed nothing and
    succeeded, as such attempts keep no log."""
    resolve_run(store, run_id)
    attempts = store.attempts(run_id, ws_id)
    if not attempts:
        known = {r["ws_id"] for r in store.workstreams(run_id)}
        if ws_id not in known:
            raise UsageError(f"run {run_id} has no workstream '{ws_id}'")
        raise UsageError(f"workstream '{ws_id}' of run {run_id} has not started; no log yet")
    if attempt is None:
        row = attempts[-1]
    else:
        row = next((a for a in attempts if a["attempt"] == attempt), None)
        if row is None:
            raise UsageError(f"--attempt: workstream '{ws_id}' has attempts "
                             f"{', '.join(str(a['attempt']) for a in attempts)}")
    return Path(row["log_path"]) if row["log_path"] else None
