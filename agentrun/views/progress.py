"""What ``run`` shows while it works: a live panel on a terminal, plain event lines otherwise."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from agentrun.views.output import ForgivingOutput
from agentrun.spec.durations import format_duration
from agentrun.store.events import read_events


def format_event(rec: dict) -> str:
    """One plain line for one event record."""
    stamp = time.strftime("%H:%M:%S", time.localtime(rec.get("ts", 0)))
    kind = rec.get("type", "?")
    parts = [stamp, f"{kind:<15}"]
    if rec.get("ws_id"):
        parts.append(rec["ws_id"])
    if rec.get("attempt") and kind not in ("ws_ready", "ws_blocked"):
        parts.append(f"attempt {rec['attempt']}")
    for key in ("error", "because", "retry_in", "status", "reason", "gate", "detail"):
        value = rec.get(key)
        if value not in (None, ""):
            parts.append(f"{key}={value}")
    if kind == "run_finished" or kind == "run_interrupted":
        counts = rec.get("counts") or {}
        parts.append(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return "  ".join(str(p) for p in parts)


def forgiving(out: TextIO) -> ForgivingOutput:
    """A display must never stop the run it shows: the orchestrator calls it from its loop."""
    return out if isinstance(out, ForgivingOutput) else ForgivingOutput(out)


class PlainDisplay:
    """Follows the run's event log and prints each new record as a line (until nobody reads them)."""

    interval = 1.0

    def __init__(self, events_path, out: TextIO = sys.stdout):
        self.path = events_path
        self.out = forgiving(out)
        # A resumed run appends to its log: show only what happens from now on.
        self.offset = os.path.getsize(events_path) if os.path.exists(events_path) else 0

    def update(self, orch, force: bool = False) -> None:
        if self.out.reader_gone:
            return
        try:
            records, self.offset, _ = read_events(self.path, self.offset)
        except FileNotFoundError:
            return
        if records:
            self.out.write("".join(format_event(r) + "\n" for r in records))
            self.out.flush()


class LiveDisplay:
    """A panel redrawn in place (one write per frame, no clearing of the screen: no flicker)."""

    interval = 0.25

    def __init__(self, out: TextIO = sys.stdout, max_rows: int = 12):
        self.out = forgiving(out)
        self.max_rows = max_rows
        self.lines_drawn = 0
        self.last = 0.0

    def update(self, orch, force: bool = False) -> None:
        now = time.monotonic()
        if self.out.reader_gone or (not force and now - self.last < self.interval):
            return
        self.last = now
        sched = orch.sched
        if sched is None:
            return
        total = len(orch.plan.workstreams)
        running = sorted(orch.started.items(), key=lambda kv: kv[1])
        queued = len(sched.queued())
        elapsed = time.time() - orch.t0
        eta = orch.eta()
        lines = [
            f"agentrun {orch.run_id}  {len(sched.done)}/{total} done  {len(running)} running  "
            f"{queued} queued  {len(sched.waiting)} retrying  {len(sched.failed)} failed  "
            f"{len(sched.blocked)} blocked   elapsed {format_duration(elapsed)}  "
            f"eta {format_duration(eta) if eta is not None else '-'}",
        ]
        wall = time.time()
        for ws_id, started in running[: self.max_rows]:
            lines.append(f"  running  {ws_id:<32} {format_duration(wall - started):>7}  "
                         f"attempt {orch.attempts.get(ws_id, 1)}")
        if len(running) > self.max_rows:
            lines.append(f"  ... and {len(running) - self.max_rows} more")
        frame = ""
        if self.lines_drawn:
            frame += f"\x1b[{self.lines_drawn}F"
        frame += "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J"
        self.out.write(frame)
        self.out.flush()
        self.lines_drawn = len(lines)


def display_for(out: TextIO, events_path, quiet: bool = False):
    if quiet:
        return None
    if out.isatty():
        return LiveDisplay(out)
    return PlainDisplay(events_path, out)
