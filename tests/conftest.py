"""Shared fixtures: real workstream directories, real runs of the real CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_ws(directory: Path, ws_id: str, **fields) -> Path:
    """One workstream file, id from the file name."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{ws_id}.toml"
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in fields.items()))
    return path


def agentrun(*args, cwd: Path, env: dict | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "agentrun", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)


class StateDB:
    """Read-only look into a run's state DB, for assertions."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        self.db.row_factory = sqlite3.Row

    def latest_run(self):
        return self.db.execute("SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()

    def workstreams(self, run_id: str) -> dict:
        rows = self.db.execute("SELECT * FROM workstreams WHERE run_id = ?", (run_id,)).fetchall()
        return {r["ws_id"]: r for r in rows}

    def attempts(self, run_id: str) -> list:
        return self.db.execute("SELECT * FROM attempts WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()

    def close(self):
        self.db.close()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch project directory (not a git repository) with a workstream dir `w/`."""
    root = tmp_path / "proj"
    (root / "w").mkdir(parents=True)
    return root


def state(project: Path) -> StateDB:
    return StateDB(project / ".agentrun" / "state.db")


def events(project: Path, run_id: str) -> list[dict]:
    path = project / ".agentrun" / "runs" / run_id / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(predicate, timeout: float = 30.0):
    """Poll a condition on real state (files, DB rows), bounded; returns its first truthy value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def running_log(project: Path) -> Path | None:
    """The log file of the running attempt, once it is recorded as running."""
    try:
        db = state(project)
        rows = db.db.execute("SELECT log_path FROM attempts WHERE status = 'running'").fetchall()
        db.close()
    except sqlite3.Error:  # not created yet
        return None
    paths = [Path(r["log_path"]) for r in rows if r["log_path"]]
    return paths[0] if paths and paths[0].is_file() else None


def statuses(project: Path) -> dict[str, str]:
    """Workstream statuses of the latest run, as far as it is recorded yet."""
    try:
        db = state(project)
        run = db.latest_run()
        return {w: r["status"] for w, r in db.workstreams(run["id"]).items()} if run else {}
    except sqlite3.OperationalError:  # no DB yet
        return {}


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_tiny_run(project: Path, n: int = 800,
                   started: int = 200) -> tuple[subprocess.Popen, Path, list[str], list[int]]:
    """Start a 2-worker run of ``n`` tiny plain commands (each appends its id to a ledger, so
    workers reserve them in batches) and return once ``started`` of them have run: the process,
    the ledger, the ids and the worker pids."""
    ledger = project / "ledger"
    ledger.touch()
    ids = [f"n{i:03d}" for i in range(n)]
    for ws_id in ids:
        write_ws(project / "w", ws_id, run=f"echo $AGENTRUN_WS_ID >> {ledger}")
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "--parallel", "--max-workers", "2", "-q"],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for(lambda: len(ledger.read_text().splitlines()) >= started)
    workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(workers) == 2
    return proc, ledger, ids, workers
