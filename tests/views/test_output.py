"""Where output goes is never a reason to stop or lose work: a closed descriptor, a full disk, a
terminal that goes away, a Ctrl-C before anything started."""

from __future__ import annotations

import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import state, wait_for, write_ws
from gitutil import git, init_repo

CLI = [sys.executable, "-m", "agentrun"]


def _sh(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("closed", [">&-", "2>&-", ">&- 2>&-"])
def test_a_run_with_a_closed_descriptor_runs_to_its_end(project, closed):
    for i in range(3):
        write_ws(project / "w", f"q{i}", run=f"echo {i} > out{i}")
    proc = _sh(f"{shlex.join(CLI)} run w -j 2 {closed}; echo $? > code", project)
    assert (project / "code").read_text() == "0\n", proc.stderr
    assert "Traceback" not in proc.stderr
    db = state(project)
    run = db.latest_run()
    assert run["status"] == "done"
    assert all((project / f"out{i}").read_text() == f"{i}\n" for i in range(3))
    # and nothing was written to the state DB through a descriptor that stood in for stdout
    assert db.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    status = _sh(f"{shlex.join(CLI)} status {closed}; echo $? > code", project)
    assert (project / "code").read_text() == "0\n", status.stderr


def test_logs_to_a_full_disk_says_so_in_one_line(project):
    write_ws(project / "w", "talk", run="seq 1 200000")
    assert subprocess.run([*CLI, "run", "w", "-q"], cwd=project, capture_output=True).returncode == 0
    run_id = state(project).latest_run()["id"]
    proc = _sh(f"{shlex.join(CLI)} logs {run_id} talk > /dev/full", project)
    assert proc.returncode == 1
    assert proc.stderr == "error: cannot write the log to the output: No space left on device\n"


@pytest.mark.skipif(subprocess.run(["which", "tmux"], capture_output=True).returncode != 0,
                    reason="tmux is not installed")
def test_a_run_goes_on_when_its_terminal_closes(tmp_path):
    repo = init_repo(tmp_path / "repo", {"a.txt": "a\n"})
    release = tmp_path / "release"
    started = tmp_path / "started"
    write_ws(repo / "w", "first", files=["b.txt"],
             run=f"touch {started}; while [ ! -e {release} ]; do sleep 0.02; done; echo b > b.txt")
    write_ws(repo / "w", "second", files=["c.txt"], depends_on=["first"], run="echo c > c.txt")
    socket = f"agentrun-test-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket, "-f", "/dev/null"]
    command = f"cd {shlex.quote(str(repo))} && {shlex.join(CLI)} run w -j 2"
    subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "30", "sh", "-c", command], check=True)
    try:
        wait_for(started.exists, timeout=60)
        subprocess.run([*tmux, "kill-server"], check=True)   # the terminal goes away: SIGHUP
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    release.touch()
    db = state(repo)
    run = wait_for(lambda: (r := db.latest_run()) and r["finished_at"] and r, timeout=60)
    assert run["status"] == "done"
    assert {w: r["status"] for w, r in db.workstreams(run["id"]).items()} == {"first": "done", "second": "done"}


def test_ctrl_c_at_any_moment_of_start_up_leaves_nothing_half_made(tmp_path):
    repo = init_repo(tmp_path / "repo", {"a.txt": "a\n"})
    for i in range(4):
        write_ws(repo / "w", f"ws{i}", files=[f"f{i}.txt"], run=f"echo {i} > f{i}.txt")
    rng = random.Random(7)
    for _ in range(12):
        proc = subprocess.Popen([*CLI, "run", "w", "-q"], cwd=repo, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        time.sleep(rng.uniform(0.0, 0.6))   # the moment under test, not a synchronisation
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        if "Traceback" in err:
            # Python's own start-up, before any of agentrun's modules runs, cannot be helped
            assert not re.search(r"/agentrun/(\w+/)*\w+\.py", err), err
        else:
            assert proc.returncode in (0, 130), err
    runs_dir = repo / ".agentrun" / "runs"
    recorded = set()
    if (repo / ".agentrun" / "state.db").exists():
        db = state(repo)
        rows = db.db.execute("SELECT id, status FROM runs").fetchall()
        recorded = {r["id"] for r in rows}
        assert {r["status"] for r in rows} <= {"done", "interrupted"}
    branches = git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/agentrun/").stdout.split()
    assert {b.split("/")[1] for b in branches} <= recorded
    assert {p.name for p in runs_dir.iterdir()} <= recorded if runs_dir.exists() else True
