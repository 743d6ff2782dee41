"""Reading a run back from the state DB: ``status`` and ``logs``."""

from __future__ import annotations

import time
from pathlib import Path

from agentrun.spec.durations import format_duration
from agentrun.errors import UsageError
from agentrun.store.layout import Layout
from agentrun.store.state import StateStore, is_crashed

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


def stopped_at(run, crashed: bool) -> float | None:
    """When a run that is over stopped working (None while it runs): its last heartbeat, which an
    orchestrator that finished stamped with the end and one that died stopped stamping, never later
    than its recorded end (``recover`` records the end when it reconciles, maybe hours later)."""
    if crashed:
        return run["heartbeat_at"] or run["created_at"]
    if run["status"] == "running":
        return None
    return min(t for t in (run["heartbeat_at"], run["finished_at"]) if t)


def render_status(store: StateStore, run_id: str | None) -> str:
    with store.snapshot():
        run = resolve_run(store, run_id)
        rows = store.workstreams(run["id"])
        counts = store.counts(run["id"])
    crashed = is_crashed(run)
    stopped = stopped_at(run, crashed)
    now = time.time()
    state = f"running (orchestrator gone: agentrun recover {run['id']})" if crashed else run["status"]
    head = (f"run {run['id']}  {state}  "
            f"{format_duration((run['finished_at'] or stopped or now) - run['created_at'])}  "
            f"workers {run['max_workers']}  schedule {run['schedule']}")
    count_line = "  ".join(f"{s} {n}" for s, n in ordered_counts(counts))
    lines = [head, count_line, "", f"{'workstream':<32} {'status':<11} {'try':>3} {'wave':>4} {'time':>8}  note"]
    for r in rows:
        took = None
        if r["started_at"]:  # unfinished work of a run that is over stopped with the run
            took = max(0.0, (r["finished_at"] or stopped or now) - r["started_at"])
        note = (r["error"] or "").splitlines()[0][:60] if r["error"] else ""
        lines.append(f"{r['ws_id']:<32} {r['status']:<11} {r['attempt']:>3} {r['wave'] + 1:>4} "
                     f"{format_duration(took):>8}  {note}")
    return "\n".join(lines)


def ordered_counts(counts: dict[str, int]) -> list[tuple[str, int]]:
    """(status, number) for every status present, in STATUS_ORDER, then any other status."""
    other = sorted(s for s in counts if s not in STATUS_ORDER)
    return [(s, counts[s]) for s in (*STATUS_ORDER, *other) if counts.get(s)]


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
