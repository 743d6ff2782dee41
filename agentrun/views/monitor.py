"""``agentrun monitor``: follow a run live, from another process, without touching it.

Everything here reads: the state DB through a read-only connection (short
read transactions, count queries, bounded row reads, so a run with thousands
of workstreams costs the same as a small one) and the run's event log
incrementally from an offset. On a terminal a panel is redrawn in place at
2 frames a second; otherwise each new event becomes one plain line, and a
summary line ends the output when the run ends.

A run recorded as ``running`` whose orchestrator process is dead and whose
heartbeat has gone stale will never end by itself: the follower says so and
points at ``agentrun recover``.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
import unicodedata
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, TextIO

from agentrun.proc import process as procs
from agentrun.spec.durations import format_duration
from agentrun.errors import UsageError
from agentrun.store.events import read_events
from agentrun.views.progress import format_event
from agentrun.store.state import FINAL_STATUSES, StateStore
from agentrun.views.status import STATUS_ORDER

HEARTBEAT_SECONDS = 2.0     # runner.RUN_HEARTBEAT_SECONDS: a live orchestrator stamps runs.heartbeat_at this often
GONE_AFTER = 3 * HEARTBEAT_SECONDS
FRAME_SECONDS = 0.5         # terminal panel: 2 frames a second
POLL_SECONDS = 0.5          # plain output: how often to look for new events
END_GRACE_SECONDS = 3.0     # once the run's status is final, how long to wait for its last event
EVENTS_SHOWN = 5
VIEW_CPU_SHARE = 0.02       # terminal panel: at most this share of a core goes to re-reading the full view
TAIL_BYTES = 256 * 1024     # on a terminal only the last events matter: start reading this far from the end
TERMINAL_EVENTS = ("run_finished", "run_interrupted", "run_recovered")
ACTIVE = ("pending", "ready", "running", "retrying")      # not finished: what the ETA counts
# Table order: what is happening now, then what went wrong, then what is waiting, then what is over.
ROW_ORDER = ("running", "retrying", "crashed", "lost", "failed", "conflict", "interrupted", "ready", "pending",
             "blocked", "done")
ROW_COLUMNS = "ws_id, status, attempt, wave, started_at, finished_at, estimate, error"


# --- the event log ---------------------------------------------------------------
class EventTail:
    """Incremental reader of a run's event log: only new complete records, from an offset."""

    def __init__(self, path: str | Path, keep: int = EVENTS_SHOWN):
        self.path = Path(path)
        self.offset = 0
        self.recent: deque[dict] = deque(maxlen=keep)
        self.last_type: str | None = None

    def skip_to_tail(self, nbytes: int = TAIL_BYTES) -> None:
        """Start near the end (at a line boundary): for views that show only the last events."""
        try:
            with open(self.path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                if size <= nbytes:
                    return
                fh.seek(size - nbytes)
                chunk = fh.read(nbytes)
        except FileNotFoundError:
            return
        cut = chunk.find(b"\n")
        if cut >= 0:
            self.offset = size - nbytes + cut + 1

    def poll(self) -> list[dict]:
        try:
            if os.stat(self.path).st_size <= self.offset:
                return []
            records, self.offset, _ = read_events(self.path, self.offset)
        except FileNotFoundError:
            return []
        if records:
            self.recent.extend(records)
            self.last_type = records[-1].get("type")
        return records


def last_events(path: str | Path, n: int) -> list[dict]:
    tail = EventTail(path, keep=n)
    tail.skip_to_tail(min(TAIL_BYTES, 2048 * max(n, 1)))
    tail.poll()
    return list(tail.recent)


# --- reading the DB ------------------------------------------------------------------
@dataclass
class RunView:
    """One consistent look at a run: its row, counts by status, the first rows of the table."""

    run: dict[str, Any]
    counts: dict[str, int]
    rows: list[dict[str, Any]]
    remaining_work: float                        # seconds of estimated work not done yet
    usage: dict[str, tuple[int, float]] | None   # ws_id -> (tokens, cost in USD), when LLM calls are recorded
    now: float

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def elapsed(self) -> float:
        return elapsed_of(self.run, self.now)

    @property
    def eta(self) -> float | None:
        if self.run["status"] != "running":
            return None
        return max(self.remaining_work / max(self.run["max_workers"] or 1, 1), 0.0)

    @property
    def usage_total(self) -> tuple[int, float] | None:
        if not self.usage:
            return None
        return sum(t for t, _ in self.usage.values()), sum(c for _, c in self.usage.values())

    def orchestrator(self) -> tuple[str, float | None]:
        return orchestrator_state(self.run, self.now)


def elapsed_of(run, now: float) -> float:
    return max(0.0, (run["finished_at"] or now) - run["created_at"])


def read_run(store: StateStore, run_id: str) -> dict[str, Any] | None:
    with store.snapshot() as db:
        row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return dict(row) if row is not None else None


def counts_of(db: sqlite3.Connection, run_id: str) -> dict[str, int]:
    return {r[0]: r[1] for r in db.execute("SELECT status, COUNT(*) FROM workstreams WHERE run_id = ? "
                                           "GROUP BY status", (run_id,))}


def ordered_statuses(counts: dict[str, int]) -> list[str]:
    known = [s for s in ROW_ORDER if counts.get(s)]
    return known + sorted(s for s in counts if s not in ROW_ORDER and counts[s])


def load_view(store: StateStore, run_id: str, row_limit: int, *, usage: UsageTracker | None = None,
              now: float | None = None) -> RunView | None:
    """Counts, ETA and at most ``row_limit`` rows (running first), in one short read transaction."""
    now = time.time() if now is None else now
    with store.snapshot() as db:
        run = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if run is None:
            return None
        counts = counts_of(db, run_id)
        # At most one running row per worker: read them all (the ETA needs them), with their attempt's start.
        running = [dict(r) for r in db.execute(
            "SELECT w.ws_id, w.status, w.attempt, w.wave, w.started_at, w.finished_at, w.estimate, w.error, "
            "a.started_at AS attempt_started FROM workstreams w LEFT JOIN attempts a ON a.run_id = w.run_id "
            "AND a.ws_id = w.ws_id AND a.attempt = w.attempt WHERE w.run_id = ? AND w.status = 'running' "
            "ORDER BY COALESCE(a.started_at, w.started_at), w.ws_id", (run_id,))]
        waiting = [s for s in ACTIVE if s != "running"]
        queued = db.execute(f"SELECT COALESCE(SUM(estimate), 0) FROM workstreams WHERE run_id = ? AND status "
                            f"IN ({', '.join('?' * len(waiting))})", (run_id, *waiting)).fetchone()[0]
        rows = running[:row_limit]
        for status in ordered_statuses(counts):
            if len(rows) >= row_limit:
                break
            if status == "running":
                continue
            # Finished: the latest first. Waiting: in plan (insertion) order, which the (run_id, status)
            # index already has: no sort over thousands of rows.
            order = "finished_at DESC, ws_id" if status in FINAL_STATUSES else "rowid"
            rows.extend(dict(r) for r in db.execute(
                f"SELECT {ROW_COLUMNS} FROM workstreams WHERE run_id = ? AND status = ? ORDER BY {order} LIMIT ?",
                (run_id, status, row_limit - len(rows))))
        spent = usage.read(db, run_id) if usage is not None else None
    in_flight = sum(max(r["estimate"] - (now - (r["attempt_started"] or r["started_at"] or now)), 0.0)
                    for r in running)
    return RunView(dict(run), counts, rows, queued + in_flight, spent, now)


def llm_usage(db: sqlite3.Connection, run_id: str) -> dict[str, tuple[int, float]] | None:
    """Tokens and cost per workstream from ``llm_calls``, or None when there is no such table or no row."""
    if not _has_llm_calls(db):
        return None
    try:
        rows = db.execute("SELECT ws_id, SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)), "
                          "SUM(COALESCE(cost_usd, 0)) FROM llm_calls WHERE run_id = ? GROUP BY ws_id",
                          (run_id,)).fetchall()
    except sqlite3.OperationalError:  # a table by that name, but not the columns we know
        return None
    return {r[0]: (int(r[1] or 0), float(r[2] or 0.0)) for r in rows} or None


def _has_llm_calls(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'llm_calls'").fetchone() is not None


class UsageTracker:
    """``llm_usage`` for repeated looks: reads only the rows added since the last look (by rowid).

    LLM calls are appended, so the per-workstream sums only grow; a full
    re-aggregation every FULL_EVERY seconds catches rows changed in place.
    """

    FULL_EVERY = 30.0

    def __init__(self) -> None:
        self._sums: dict[str, dict[str, list]] = {}
        self._seen: dict[str, int] = {}
        self._full_at: dict[str, float] = {}

    def read(self, db: sqlite3.Connection, run_id: str) -> dict[str, tuple[int, float]] | None:
        if not _has_llm_calls(db):
            return None
        now = time.monotonic()
        try:
            top = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM llm_calls").fetchone()[0]
            if run_id not in self._sums or now - self._full_at[run_id] > self.FULL_EVERY or top < self._seen[run_id]:
                sums = {ws: [t, c] for ws, (t, c) in (llm_usage(db, run_id) or {}).items()}
                self._sums[run_id], self._full_at[run_id] = sums, now
            else:
                sums = self._sums[run_id]
                for ws, tokens, cost in db.execute(
                        "SELECT ws_id, COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0), "
                        "COALESCE(cost_usd, 0) FROM llm_calls WHERE rowid > ? AND rowid <= ? AND run_id = ?",
                        (self._seen[run_id], top, run_id)):
                    entry = sums.setdefault(ws, [0, 0.0])
                    entry[0] += int(tokens or 0)
                    entry[1] += float(cost or 0.0)
            self._seen[run_id] = top
        except sqlite3.OperationalError:  # no rowid, or not the columns we know
            return llm_usage(db, run_id)
        return sums or None  # type: ignore[return-value]  (lists of [tokens, cost]; read-only for callers)


def row_elapsed(row: dict[str, Any], now: float) -> float | None:
    if row["status"] == "running":
        start = row.get("attempt_started") or row["started_at"]
        return max(0.0, now - start) if start else None
    if row["started_at"] and row["finished_at"]:
        return max(0.0, row["finished_at"] - row["started_at"])
    return None


def orchestrator_state(run, now: float | None = None) -> tuple[str, float | None]:
    """("-" | "alive" | "stale" | "gone", heartbeat age) for a run row.

    ``gone``: recorded as running, heartbeat older than GONE_AFTER, and its
    process (pid and start time) no longer exists. ``stale``: the heartbeat is
    old but the process is there (stopped, or busy shutting down).
    """
    if run["status"] != "running":
        return "-", None
    now = time.time() if now is None else now
    age = max(0.0, now - (run["heartbeat_at"] or run["created_at"]))
    if age < GONE_AFTER:
        return "alive", age
    if procs.is_alive(run["orchestrator_pid"], run["orchestrator_start"]):
        return "stale", age
    return "gone", age


def recent_runs(store: StateStore, limit: int, run_id: str | None = None) -> list[dict[str, Any]]:
    """The latest runs (or just ``run_id``) with their counts by status."""
    with store.snapshot() as db:
        if run_id is not None:
            rows = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchall()
        else:
            rows = db.execute("SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT ?", (limit,)).fetchall()
        runs = [dict(r) for r in rows]
        ids = [r["id"] for r in runs]
        for r in runs:
            r["counts"] = {}
        by_id = {r["id"]: r for r in runs}
        if ids:
            marks = ", ".join("?" * len(ids))
            for rid, status, n in db.execute(f"SELECT run_id, status, COUNT(*) FROM workstreams WHERE run_id "
                                             f"IN ({marks}) GROUP BY run_id, status", ids):
                by_id[rid]["counts"][status] = n
    return runs


# --- text ------------------------------------------------------------------------------
_CONTROL = {c: "?" for c in list(range(32)) + list(range(127, 160))}
_CONTROL.update({ord("\n"): " ", ord("\r"): " ", ord("\t"): " "})


def clean(text: str) -> str:
    """No control characters from recorded text reach the terminal (one line, no escapes)."""
    return text.translate(_CONTROL)


def fit(text: str, width: int) -> str:
    """Cut ``text`` to at most ``width`` terminal columns (a wrapped line would break the redraw)."""
    if len(text) <= width and text.isascii():
        return text
    cols, out = 0, []
    for ch in text:
        w = 0 if unicodedata.combining(ch) else (2 if unicodedata.east_asian_width(ch) in "WF" else 1)
        if cols + w > width:
            break
        cols += w
        out.append(ch)
    return "".join(out)


def counts_text(counts: dict[str, int]) -> str:
    order = [s for s in STATUS_ORDER if counts.get(s)] + sorted(s for s in counts if s not in STATUS_ORDER)
    return ", ".join(f"{counts[s]} {s}" for s in order) or "no workstreams"


def summary_line(run, counts: dict[str, int], now: float | None = None) -> str:
    """The last line of a followed run, in the form ``agentrun run`` ends with."""
    now = time.time() if now is None else now
    return f"run {run['id']} {run['status']} in {format_duration(elapsed_of(run, now))}: {counts_text(counts)}"


def gone_message(run, age: float | None) -> str:
    pid = f"pid {run['orchestrator_pid']}" if run["orchestrator_pid"] else "no pid recorded"
    beat = f", last heartbeat {format_duration(age)} ago" if age is not None else ""
    return (f"run {run['id']}: orchestrator is gone ({pid}{beat}); "
            f"run `agentrun recover {run['id']}`")


def render_panel(view: RunView, events: Iterable[dict], width: int, height: int) -> list[str]:
    """The terminal panel: at most ``height - 1`` lines of at most ``width - 1`` columns."""
    run, counts = view.run, view.counts
    eta = view.eta
    head = (f"agentrun monitor  run {run['id']}  {run['status']}  elapsed {format_duration(view.elapsed)}"
            + (f"  eta {format_duration(eta)}" if eta is not None else "")
            + f"  workers {run['max_workers']}")
    state, age = view.orchestrator()
    if state == "stale":
        head += f"  (no heartbeat for {format_duration(age)})"
    elif state == "gone":
        head += "  ORCHESTRATOR GONE"
    tally = f"{counts.get('done', 0)}/{view.total} done"
    others = [s for s in ordered_statuses(counts) if s != "done"]
    if others:
        tally += "  " + "  ".join(f"{s} {counts[s]}" for s in others)
    usage_total = view.usage_total
    if usage_total:
        tally += f"  tokens {usage_total[0]:,}  cost ${usage_total[1]:.2f}"
    top = [head, tally]
    tail = ["", "recent events"] + ["  " + clean(format_event(e)) for e in events]
    if len(tail) == 2:
        tail = []
    budget = height - 1 - len(top)
    if budget - len(tail) < 3:   # a small terminal: the table matters more than the events
        tail = []
    table_space = max(0, budget - len(tail))
    lines = top + _table(view, table_space) + tail
    return [fit(line, max(width - 1, 10)) for line in lines[:max(height - 1, 1)]]


def _table(view: RunView, space: int) -> list[str]:
    if space < 2 or not view.total:
        return []
    fits = space - 1 if view.total <= space - 1 else space - 2   # header, rows, "... N more"
    rows = view.rows[:max(fits, 0)]
    usage = view.usage
    name_w = min(max([len(r["ws_id"]) for r in rows] + [10]), 40)
    header = f"{'workstream':<{name_w}}  {'state':<11} {'try':>3} {'wave':>4} {'elapsed':>8}"
    if usage:
        header += f" {'tokens':>10} {'cost':>9}"
    out = [header + "  note"]
    for r in rows:
        line = (f"{r['ws_id']:<{name_w}}  {r['status']:<11} {r['attempt'] or '-':>3} {r['wave'] + 1:>4} "
                f"{format_duration(row_elapsed(r, view.now)):>8}")
        if usage:
            tokens, cost = usage.get(r["ws_id"], (0, 0.0))
            line += f" {tokens:>10,} {'$%.2f' % cost:>9}"
        if r["error"] and r["status"] != "done":
            line += "  " + clean(r["error"].strip().splitlines()[0] if r["error"].strip() else "")
        out.append(line)
    hidden = view.total - len(rows)
    if hidden > 0:
        left = dict(view.counts)
        for r in rows:
            left[r["status"]] = left.get(r["status"], 0) - 1
        parts = ", ".join(f"{s} {left[s]}" for s in ordered_statuses(left) if left[s] > 0)
        out.append(f"... {hidden} more: {parts}")
    return out


def render_summary(runs: list[dict[str, Any]], now: float | None = None) -> str:
    """``monitor --summary``: one line per run."""
    now = time.time() if now is None else now
    if not runs:
        return "no runs recorded"
    id_w = max(len(r["id"]) for r in runs)
    lines = [f"{'run':<{id_w}}  {'status':<11} {'wall':>8} {'workers':>7}  workstreams"]
    for r in runs:
        status = r["status"]
        note = ""
        state, _ = orchestrator_state(r, now)
        if state == "gone":
            note = f"  (orchestrator gone: agentrun recover {r['id']})"
        total = sum(r["counts"].values())
        lines.append(f"{r['id']:<{id_w}}  {status:<11} {format_duration(elapsed_of(r, now)):>8} "
                     f"{r['max_workers']:>7}  {total} total: {counts_text(r['counts'])}{note}")
    return "\n".join(lines)


# --- following ----------------------------------------------------------------------
class Panel:
    """Redraws a block of lines in place: one write per frame, cursor up + clear to end of line."""

    def __init__(self, out: TextIO):
        self.out = out
        self.drawn = 0

    def draw(self, lines: list[str]) -> None:
        frame = f"\x1b[{self.drawn}F" if self.drawn else "\x1b[?25l"   # up to the panel's top; hide the cursor
        frame += "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J"
        self.out.write(frame)
        self.out.flush()
        self.drawn = len(lines)

    def close(self) -> None:
        if self.drawn:
            self.out.write("\x1b[?25h")
            self.out.flush()


def terminal_size(out: TextIO) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(out.fileno())
        return size.columns or 80, size.lines or 24
    except (OSError, ValueError, AttributeError):
        return 80, 24


class Follower:
    """Follows one run until it ends (0), or its orchestrator is found dead (1)."""

    def __init__(self, store: StateStore, events_path: str | Path, run_id: str, out: TextIO, *, tty: bool,
                 exit_status: bool = False):
        self.store = store
        self.run_id = run_id
        self.out = out
        self.tty = tty
        self.exit_status = exit_status
        self.tail = EventTail(events_path)
        self.panel = Panel(out) if tty else None
        self.usage = UsageTracker()
        self.view: RunView | None = None
        self.refresh_at = 0.0
        self.height = 0
        if tty:
            self.tail.skip_to_tail()

    def run(self) -> int:
        try:
            return self._loop()
        finally:
            if self.panel is not None:
                self.panel.close()

    def _loop(self) -> int:
        interval = FRAME_SECONDS if self.tty else POLL_SECONDS
        while True:
            started = time.monotonic()
            run = self._step()
            if run["status"] != "running":
                return self._ended()
            state, age = orchestrator_state(run)
            if state == "gone":
                # Re-read: it may have finished between our read and its exit.
                run = read_run(self.store, self.run_id) or run
                if run["status"] != "running":
                    return self._ended()
                self._step()
                self._write(gone_message(run, age) + "\n")
                return 1
            time.sleep(max(0.05, interval - (time.monotonic() - started)))

    def _step(self) -> dict[str, Any]:
        """Read the run (and on a terminal draw a frame), then print new events; returns the run row."""
        run = read_run(self.store, self.run_id)
        if run is None:
            raise UsageError(f"run {self.run_id} is no longer in the state DB")
        new = self.tail.poll()
        if self.tty:
            self._frame(run)
        elif new:
            self._write("".join(clean(format_event(r)) + "\n" for r in new))
        return run

    def _frame(self, run: dict[str, Any]) -> None:
        # The full view (counts, rows, usage) costs more with thousands of workstreams: it is re-read at
        # most every VIEW_CPU_SHARE-th of the time it takes, and as soon as the run's status changes. In
        # between, the frame is redrawn from it with the fresh run row and clock (timers keep ticking).
        width, height = terminal_size(self.out)
        mono = time.monotonic()
        view = self.view
        if (view is None or mono >= self.refresh_at or view.run["status"] != run["status"]
                or height != self.height):
            took = time.perf_counter()
            view = load_view(self.store, self.run_id, row_limit=max(height, 1), usage=self.usage) or view
            took = time.perf_counter() - took
            self.refresh_at = mono + took / VIEW_CPU_SHARE
            self.height = height
        view = self.view = replace(view, run=run, now=time.time())
        self.panel.draw(render_panel(view, self.tail.recent, width, height))

    def _ended(self) -> int:
        # The orchestrator records the final status, then writes its last event: wait for it (briefly).
        deadline = time.monotonic() + END_GRACE_SECONDS
        while self.tail.last_type not in TERMINAL_EVENTS and time.monotonic() < deadline:
            time.sleep(0.1)
            self._step()
        run = self._step()
        with self.store.snapshot() as db:
            counts = counts_of(db, self.run_id)
        self._write(summary_line(run, counts) + "\n")
        if self.exit_status and run["status"] != "done":
            return 1
        return 0

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        if getattr(self.out, "reader_gone", False):  # agentrun's stdout drops output nobody reads
            raise BrokenPipeError("nobody reads the output any more")


def follow(store: StateStore, events_path: str | Path, run_id: str, out: TextIO = sys.stdout, *,
           tty: bool | None = None, exit_status: bool = False) -> int:
    if tty is None:
        tty = out.isatty() and os.environ.get("TERM") != "dumb"
    return Follower(store, events_path, run_id, out, tty=tty, exit_status=exit_status).run()
