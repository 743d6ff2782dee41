"""Ctrl-C at a terminal: the terminal signals the whole foreground process group (orchestrator,
workers, and any git they are running). Work that was running is recorded ``interrupted``,
never ``failed``; no git lock is left behind; ``resume`` finishes the run."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import wait_for, write_ws
from gitutil import DB, init_repo, out

N = 40


def _git_heavy_run(repo: Path) -> None:
    # Each attempt is mostly git: worktree add, commit, rebase, update-ref, worktree remove. A
    # signal that reaches the whole group almost surely lands inside one of them.
    for i in range(N):
        write_ws(repo / "w", f"ws{i:02d}", files=[f"f{i:02d}.txt"], run=f"echo {i} > f{i:02d}.txt")


def _integrated(repo: Path) -> int:
    """Results integrated so far, from the run's event log."""
    return sum(path.read_text().count('"type":"ws_integrated"')
               for path in (repo / ".agentrun" / "runs").glob("*/events.jsonl"))


def _check_interrupted_then_resume(repo: Path) -> None:
    db = DB(repo)
    run = db.run()
    rows = db.workstreams(run["id"])
    attempts = db.db.execute("SELECT ws_id, status, error FROM attempts WHERE run_id = ?", (run["id"],)).fetchall()
    db.close()
    assert run["status"] == "interrupted"
    assert not [r["ws_id"] for r in rows.values() if r["status"] == "failed"]
    assert not [(a["ws_id"], a["error"]) for a in attempts if a["status"] == "failed"]
    assert 0 < sum(r["status"] == "done" for r in rows.values()) < N
    stale = [p for p in (repo / ".git").rglob("*.lock") if not p.name.startswith("agentrun-")]  # ours are filelocks
    assert not stale, "git lock files left behind"
    resumed = subprocess.run([sys.executable, "-m", "agentrun", "resume", run["id"], "-q"], cwd=repo,
                             capture_output=True, text=True, timeout=300, start_new_session=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    db = DB(repo)
    rows = db.workstreams(run["id"])
    db.close()
    assert {r["status"] for r in rows.values()} == {"done"}
    head = run["integration_branch"]
    assert sorted(out(repo, "ls-tree", "--name-only", head).split()) == sorted(
        ["README", "a.txt"] + [f"f{i:02d}.txt" for i in range(N)])
    trailers = out(repo, "log", "--format=%(trailers:key=Agentrun-Workstream,valueonly)", head).split()
    assert len(trailers) == len(set(trailers)) == N   # each result integrated exactly once


def test_sigint_to_the_foreground_group_interrupts_and_resume_completes(tmp_path):
    repo = init_repo(tmp_path / "repo", {"a.txt": "a\n", "README": "r\n"})
    _git_heavy_run(repo)
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "--parallel", "--max-workers", "2"],
                            cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for(lambda: _integrated(repo) >= 5, timeout=120)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    _check_interrupted_then_resume(repo)


@pytest.mark.skipif(subprocess.run(["which", "tmux"], capture_output=True).returncode != 0,
                    reason="tmux is not installed")
def test_ctrl_c_in_a_real_terminal(tmp_path):
    repo = init_repo(tmp_path / "repo", {"a.txt": "a\n", "README": "r\n"})
    _git_heavy_run(repo)
    socket = f"agentrun-test-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-code"
    # The shell traps INT (with a command, so that agentrun gets the default handling) to live on
    # and record agentrun's exit code.
    command = (f"trap true INT; cd {shlex.quote(str(repo))} && {shlex.quote(sys.executable)} -m agentrun run w "
               f"--parallel --max-workers 2; echo $? > {shlex.quote(str(done))}")
    tmux = ["tmux", "-L", socket, "-f", "/dev/null"]
    subprocess.run([*tmux, "new-session", "-d", "-x", "160", "-y", "40", "sh", "-c", command], check=True)
    try:
        wait_for(lambda: _integrated(repo) >= 5, timeout=120)
        screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
        assert "agentrun" in screen and "done" in screen   # the live panel, on a terminal
        subprocess.run([*tmux, "send-keys", "C-c"], check=True)
        wait_for(lambda: done.exists() and done.read_text().strip(), timeout=120)
        screen = subprocess.run([*tmux, "capture-pane", "-p", "-S", "-100"], capture_output=True, text=True).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert done.read_text().strip() == "130", screen
    assert "Traceback" not in screen
    _check_interrupted_then_resume(repo)
