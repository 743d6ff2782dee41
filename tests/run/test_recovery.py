"""Crash recovery: kill -9 at random moments and at every named crash point, recover, resume."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentrun.store.crashpoints import POINTS
from agentrun.spec.durations import parse_duration
from agentrun.run.recovery import run_processes
from conftest import agentrun, events, pid_alive, start_tiny_run, state, statuses, wait_for, write_ws


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def make_repo(root: Path, n: int, ledger: Path, seed: int = 7) -> Path:
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "t")
    git(repo, "config", "user.email", "t@example.com")
    (repo / "README").write_text("scratch\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    rng = random.Random(seed)
    for i in range(n):
        ws_id = f"w{i:02d}"
        deps = sorted({f"w{j:02d}" for j in rng.sample(range(i), min(i, rng.randint(0, 2)))}) if i else []
        delay = rng.choice(["0", "0.05", "0.1", "0.2"])
        write_ws(root / "specs", ws_id, depends_on=deps, files=[f"out/{ws_id}.txt"],
                 run=f'echo "$AGENTRUN_WS_ID $AGENTRUN_ATTEMPT" >> {ledger}; sleep {delay}; '
                     f'mkdir -p out && echo {ws_id} > out/{ws_id}.txt')
    return repo


def _latest_run(repo: Path) -> str | None:
    db = repo / ".agentrun" / "state.db"
    if not db.exists():
        return None
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT id FROM runs ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()
    return row[0] if row else None


def _start(repo: Path, args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agentrun", *args], cwd=repo, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _done_set(repo: Path, run_id: str) -> set[str]:
    con = sqlite3.connect(repo / ".agentrun" / "state.db")
    try:
        return {r[0] for r in con.execute("SELECT ws_id FROM workstreams WHERE run_id = ? AND status = 'done'",
                                          (run_id,))}
    finally:
        con.close()


def test_kill9_loop_ends_with_every_workstream_done_once(tmp_path):
    ledger = tmp_path / "ledger"
    ledger.touch()
    n = 24
    repo = make_repo(tmp_path, n, ledger)
    specs = str(tmp_path / "specs")
    rng = random.Random(11)
    crashes = [f"{p}:{rng.randint(2, 4)}" for p in POINTS] + [None] * 30
    run_id = None
    snapshots: list[tuple[int, set[str]]] = []
    finished = False
    for crash in crashes:
        args = ["resume", run_id, "-q"] if run_id else ["run", specs, "--parallel", "--max-workers", "4", "-q"]
        env = {"AGENTRUN_CRASH_AT": crash} if crash else {}
        proc = _start(repo, args, env)
        if crash is None:
            try:
                proc.wait(timeout=rng.uniform(0.2, 1.2))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=120)
        run_id = run_id or _latest_run(repo)
        if proc.returncode in (0, 1) and crash is None:
            finished = True
            break
        if run_id is None:
            continue
        rec = agentrun("recover", run_id, cwd=repo)
        assert rec.returncode == 0, rec.stderr
        snapshots.append((len(ledger.read_text().splitlines()), _done_set(repo, run_id)))
    if not finished:
        final = agentrun("resume", run_id, "-q", cwd=repo, timeout=300)
        assert final.returncode == 0, final.stdout + final.stderr

    db = state(repo)
    rows = db.workstreams(run_id)
    assert {r["status"] for r in rows.values()} == {"done"} and len(rows) == n, \
        [(w, r["status"], r["error"]) for w, r in rows.items() if r["status"] != "done"]
    attempts = db.attempts(run_id)
    for ws_id in rows:
        mine = [a for a in attempts if a["ws_id"] == ws_id]
        done = [a for a in mine if a["status"] == "done"]
        assert len(done) == 1, (ws_id, [a["status"] for a in mine])
        assert all(a["id"] < done[0]["id"] for a in mine if a is not done[0]), ws_id
    # Each result is on the integration branch exactly once.
    log = git(repo, "log", "--format=%B", f"agentrun/{run_id}/integration")
    for ws_id in rows:
        assert log.count(f"Agentrun-Workstream: {run_id}/{ws_id}\n") == 1, ws_id
    tip_files = git(repo, "ls-tree", "-r", "--name-only", f"agentrun/{run_id}/integration").split()
    assert sorted(f for f in tip_files if f.startswith("out/")) == sorted(f"out/{w}.txt" for w in rows)
    # Nothing that was done before a crash ran again afterwards.
    lines = ledger.read_text().splitlines()
    for seen, done_then in snapshots:
        rerun = {line.split()[0] for line in lines[seen:]} & done_then
        assert not rerun, rerun
    con = sqlite3.connect(repo / ".agentrun" / "state.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    events_path = repo / ".agentrun" / "runs" / run_id / "events.jsonl"
    for line in events_path.read_text().splitlines():
        json.loads(line)
    assert run_processes(run_id) == []
    assert git(repo, "fsck", "--no-progress") == ""


def test_orphaned_workers_stop_on_their_own_and_resume_finishes_reserved_work(project):
    # Tiny plain commands: workers reserve several at a time and record them later. Killing only
    # the orchestrator orphans the workers mid-batch; each finishes at most the command it is
    # running, hands its reservations back and exits. Resume then does everything exactly once
    # in the DB; what ran without being recorded (at most a batch per worker) runs again.
    from agentrun.plan.scheduler import RESERVE_MAX
    proc, ledger, ids, workers = start_tiny_run(project)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not any(pid_alive(pid) for pid in workers))  # nobody killed them
    run_id = state(project).latest_run()["id"]
    reserved = sqlite3.connect(project / ".agentrun" / "state.db").execute(
        "SELECT COUNT(*) FROM workstreams WHERE reserved_by IS NOT NULL").fetchone()[0]
    assert reserved == 0
    assert agentrun("recover", run_id, cwd=project).returncode == 0
    resumed = agentrun("resume", run_id, "-q", cwd=project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    db = state(project)
    assert {r["status"] for r in db.workstreams(run_id).values()} == {"done"}
    done = sorted(a["ws_id"] for a in db.attempts(run_id) if a["status"] == "done")
    assert done == ids
    ran = ledger.read_text().split()
    assert sorted(set(ran)) == ids
    assert len(ran) - len(ids) <= 2 * (RESERVE_MAX + 1)


def test_recover_stops_orphaned_children_and_grandchildren(project):
    pids = project / "pids"
    pids.mkdir()
    write_ws(project / "w", "long",
             run=f"sh -c 'sleep 300 & echo $! > {pids}/grandchild; wait' & echo $! > {pids}/child; "
                 f"echo $$ > {pids}/leader; wait")
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w"], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while len(list(pids.iterdir())) < 3 or not all(p.read_text().strip() for p in pids.iterdir()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # orchestrator and workers; the command lives on in its own session
    proc.wait()
    recorded = {p.name: int(p.read_text()) for p in pids.iterdir()}
    assert all(pid_alive(pid) for pid in recorded.values())
    run_id = state(project).latest_run()["id"]
    listed = agentrun("recover", "--list", cwd=project)
    assert run_id in listed.stdout and "crashed" in listed.stdout
    out = agentrun("recover", run_id, cwd=project)
    assert out.returncode == 0, out.stderr
    assert "stopped orphaned process group" in out.stdout
    assert f"agentrun resume {run_id}" in out.stdout
    for name, pid in recorded.items():
        assert not pid_alive(pid), name
    db = state(project)
    assert db.latest_run()["status"] == "interrupted"
    assert [a["status"] for a in db.attempts(run_id)] == ["lost"]
    assert db.workstreams(run_id)["long"]["status"] == "lost"


def test_recover_refuses_a_live_run(project):
    gate = project / "release"
    write_ws(project / "w", "wait", run=f"while [ ! -f {gate} ]; do sleep 0.02; done")
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            run_id = _latest_run(project)
            if run_id and state(project).latest_run()["orchestrator_pid"]:
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        out = agentrun("recover", run_id, cwd=project)
        assert out.returncode == 2
        assert "is live" in out.stderr
    finally:
        gate.touch()
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_resume_after_a_clean_finish_is_a_noop(project):
    write_ws(project / "w", "a", run=f"echo ran >> {project}/ledger")
    assert agentrun("run", "w", cwd=project).returncode == 0
    run_id = state(project).latest_run()["id"]
    out = agentrun("resume", run_id, cwd=project)
    assert out.returncode == 0
    assert "nothing to resume" in out.stderr
    assert (project / "ledger").read_text() == "ran\n"


def test_resume_reruns_interrupted_work_only_and_detects_edits(project):
    gate = project / "release"
    write_ws(project / "w", "quick", run=f"echo quick >> {project}/ledger")
    write_ws(project / "w", "slow", run=f"echo slow >> {project}/ledger; while [ ! -f {gate} ]; do sleep 0.02; done",
             depends_on=["quick"])
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w"], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while "slow" not in ((project / "ledger").read_text() if (project / "ledger").exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = state(project).latest_run()["id"]
    write_ws(project / "w", "slow", run=f"echo edited >> {project}/ledger", depends_on=["quick"])
    gate.touch()
    out = agentrun("resume", run_id, cwd=project)  # recovers first, keeps the recorded definition
    assert out.returncode == 0, out.stderr
    assert "changed since the run started: slow" in out.stderr
    assert (project / "ledger").read_text().splitlines() == ["quick", "slow", "slow"]
    rows = state(project).workstreams(run_id)
    assert rows["slow"]["attempt"] == 2 and rows["quick"]["attempt"] == 1


def test_accept_changes_retries_a_failed_workstream_with_the_new_definition(project):
    write_ws(project / "w", "broken", run="exit 1")
    write_ws(project / "w", "after", run="true", depends_on=["broken"])
    assert agentrun("run", "w", cwd=project).returncode == 1
    run_id = state(project).latest_run()["id"]
    write_ws(project / "w", "broken", run="true")
    out = agentrun("resume", run_id, "--accept-changes", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = state(project).workstreams(run_id)
    assert rows["broken"]["status"] == "done" and rows["after"]["status"] == "done"


@pytest.mark.parametrize("command", [["recover", "nope"], ["resume", "nope"], ["status", "nope"],
                                     ["logs", "nope", "x"]])
def test_unknown_run_id_is_exit_2(project, command):
    write_ws(project / "w", "a", run="true")
    assert agentrun("run", "w", cwd=project).returncode == 0
    db = project / ".agentrun" / "state.db"
    before = db.read_bytes()
    out = agentrun(*command, cwd=project)
    assert out.returncode == 2
    assert "unknown run id 'nope'" in out.stderr
    assert db.read_bytes() == before


@pytest.mark.parametrize("command", [["recover"], ["recover", "--list"], ["resume", "x"], ["status"],
                                     ["clean"]])
def test_corrupt_state_db_is_exit_2_and_untouched(project, command):
    (project / ".agentrun").mkdir()
    db = project / ".agentrun" / "state.db"
    db.write_bytes(b"this is not a database" * 100)
    out = agentrun(*command, cwd=project)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "not a usable agentrun state DB" in out.stderr
    assert db.read_bytes() == b"this is not a database" * 100
    assert sorted(p.name for p in (project / ".agentrun").iterdir()) == ["state.db"]


@pytest.mark.parametrize("command", [["recover"], ["resume", "x"], ["status"]])
def test_missing_state_db_is_exit_2(project, command):
    out = agentrun(*command, cwd=project)
    assert out.returncode == 2
    assert "no state DB" in out.stderr
    assert not (project / ".agentrun").exists()




def _interrupted_run(project: Path, release: Path) -> str:
    """A 4-worker run of 3 quick workstreams and one that waits for ``release``, interrupted
    (Ctrl-C) while that one runs; returns its id."""
    for ws_id in ("q1", "q2", "q3"):
        write_ws(project / "w", ws_id, run="true")
    write_ws(project / "w", "slow", run=f"while [ ! -e {release} ]; do sleep 0.02; done")
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-j", "4"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: statuses(project) == {"q1": "done", "q2": "done", "q3": "done", "slow": "running"})
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    return state(project).latest_run()["id"]


def test_resume_starts_as_many_workers_as_there_is_work_left(project):
    release = project / "release"
    run_id = _interrupted_run(project, release)
    release.touch()
    out = agentrun("resume", run_id, "-j", 4, cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    starts = {e["type"]: e["workers"] for e in events(project, run_id) if e["type"] in ("run_started", "run_resumed")}
    assert starts == {"run_started": 4, "run_resumed": 1}


def test_the_summary_after_resume_is_the_whole_runs(project):
    release = project / "release"
    run_id = _interrupted_run(project, release)
    release.touch()
    out = agentrun("resume", run_id, cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith(f"run {run_id} "))
    match = re.fullmatch(rf"run {run_id} done (\S+) after it started \(this resume took (\S+)\): 4 done", line)
    assert match, line
    run = state(project).latest_run()
    since, this_part = (parse_duration(g) for g in match.groups())
    assert this_part <= since
    assert abs(since - (run["finished_at"] - run["created_at"])) < 0.1


def test_recover_list_counts_every_unfinished_status(project):
    release = project / "release"
    write_ws(project / "w", "flaky", run="exit 1", retries=1, retry_backoff="1h")
    write_ws(project / "w", "wait", run=f"while [ ! -e {release} ]; do sleep 0.02; done")
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-j", "2"], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: statuses(project) == {"flaky": "retrying", "wait": "running"})
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        release.touch()
    run_id = state(project).latest_run()["id"]
    listed = agentrun("recover", "--list", cwd=project)
    assert listed.returncode == 0, listed.stderr
    assert f"{run_id}  crashed (orchestrator gone)  running 1  retrying 1\n" in listed.stdout
    assert "2 queued again" in listed.stdout


@pytest.mark.parametrize("second", ["true", "exit 1"])
def test_recover_of_a_finished_run_has_nothing_to_do(project, second):
    write_ws(project / "w", "a", run="true")
    write_ws(project / "w", "b", run=second, depends_on=["a"])
    agentrun("run", "w", cwd=project)
    db = state(project)
    run = db.latest_run()
    db.close()
    assert run["status"] == ("done" if second == "true" else "failed")
    before = snapshot(project)
    out = agentrun("recover", run["id"], cwd=project)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"run {run['id']} finished {run['status']}: nothing to recover")
    assert "resume with" not in out.stdout
    assert snapshot(project) == before


def snapshot(project: Path) -> tuple[list[str], dict[str, bytes]]:
    """The state DB's rows and every other file of the state directory."""
    db = sqlite3.connect(project / ".agentrun" / "state.db")
    rows = list(db.iterdump())
    db.close()
    files = {str(p.relative_to(project)): p.read_bytes() for p in sorted((project / ".agentrun").rglob("*"))
             if p.is_file() and not p.name.startswith("state.db")}
    return rows, files


def test_recover_of_a_run_whose_orchestrator_died_after_its_last_workstream_records_it_finished(project):
    write_ws(project / "w", "only", run="true")
    crashed = agentrun("run", "w", "-q", cwd=project, env={"AGENTRUN_CRASH_AT": "after-done"})
    assert crashed.returncode == -signal.SIGKILL
    run_id = state(project).latest_run()["id"]
    assert state(project).workstreams(run_id)["only"]["status"] == "done"

    out = agentrun("recover", run_id, cwd=project)

    assert out.returncode == 0, out.stderr
    assert "marked the run done" in out.stdout and "resume with" not in out.stdout
    assert state(project).latest_run()["status"] == "done"
    assert run_id not in agentrun("recover", "--list", cwd=project).stdout
