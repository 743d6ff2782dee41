"""Where things live: the project root, the state directory and a run's files."""

from __future__ import annotations

import calendar
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from agentrun.store.state import DB_NAME


def project_root(start: Path | None = None) -> Path:
    """The git top level containing ``start`` (default: the current directory), else ``start``."""
    start = (start or Path.cwd()).resolve()
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return start
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else start


RUN_ID_TICKS = 1 << 16   # a run id's suffix counts the fraction of its second in 65536ths


def new_run_id(after: str | None = None) -> str:
    """``20261123-174442-125f``: the UTC second and, in 4 hex digits, the fraction of it. Safe in
    paths and git branch names; sorts by creation, also within one second. An id that would not
    sort after ``after`` (the latest one recorded: clocks step back, and two ids may fall in one
    tick) is moved up to the next tick after it."""
    ticks = int(time.time() * RUN_ID_TICKS)
    if after is not None:
        ticks = max(ticks, _run_id_ticks(after) + 1)
    seconds, fraction = divmod(ticks, RUN_ID_TICKS)
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(seconds))}-{fraction:04x}"


def _run_id_ticks(run_id: str) -> int:
    # Older ids end in 4 random hex digits: read the same way, they still order what comes after.
    try:
        stamp, fraction = run_id.rsplit("-", 1)
        return calendar.timegm(time.strptime(stamp, "%Y%m%d-%H%M%S")) * RUN_ID_TICKS + int(fraction, 16)
    except ValueError:
        return 0


@dataclass(frozen=True)
class Layout:
    state_dir: Path

    @property
    def db_path(self) -> Path:
        return self.state_dir / DB_NAME

    def run_dir(self, run_id: str) -> Path:
        return self.state_dir / "runs" / run_id

    def events_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "events.jsonl"

    def logs_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "logs"

    def log_path(self, run_id: str, ws_id: str, attempt: int) -> Path:
        return self.logs_dir(run_id) / f"{ws_id}.{attempt}.log"

    def tmp_dir(self, run_id: str, lane: int) -> Path:
        return self.run_dir(run_id) / "tmp" / f"lane-{lane}"

    def worktrees_dir(self, run_id: str) -> Path:
        return self.state_dir / "worktrees" / run_id

    def create_run_dirs(self, run_id: str) -> None:
        os.makedirs(self.logs_dir(run_id), exist_ok=True)


def layout_for(state_dir: str | None, root: Path) -> Layout:
    return Layout(Path(state_dir).resolve() if state_dir else root / ".agentrun")
