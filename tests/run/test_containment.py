"""Processes that leave their session, process group or environment are still stopped: at the
normal end of an attempt, at its timeout, at Ctrl-C, and after kill -9 of a worker or of the
orchestrator (then by ``recover``). Both containment mechanisms are exercised: the cgroup v2
tree where it is writable, and the child subreaper alone (AGENTRUN_CONTAINMENT=subreaper)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import agentrun, pid_alive, state, wait_for, write_ws

ESCAPES = {
    # a new session: out of the attempt's process group
    "setsid": "setsid sh -c 'echo $$ > {pids}/escapee; exec sleep 300' &",
    # orphaned at once: re-parented (to the subreaper, or init without one)
    "double-fork": "sh -c \"sh -c 'echo \\$\\$ > {pids}/escapee; exec sleep 300' &\" &",
    # a new session and no AGENTRUN_RUN_ID to be recognised by
    "setsid-env-i": "setsid env -i /bin/sh -c 'echo $$ > {pids}/escapee; exec sleep 300' &",
}


def _cgroup_writable() -> bool:
    from agentrun.run import containment
    path = containment.create_run_cgroup("probe-" + str(os.getpid()))
    if path is None:
        return False
    os.rmdir(path)
    return True


@pytest.fixture(params=["cgroup", "subreaper"])
def mode(request, monkeypatch):
    if request.param == "cgroup":
        if not _cgroup_writable():
            pytest.skip("no writable cgroup v2 tree on this machine")
        monkeypatch.delenv("AGENTRUN_CONTAINMENT", raising=False)
    else:
        monkeypatch.setenv("AGENTRUN_CONTAINMENT", "subreaper")
    return request.param


def _escaping_ws(project: Path, kind: str, then: str, **fields) -> Path:
    pids = project / "pids"
    pids.mkdir(exist_ok=True)
    command = ESCAPES[kind].format(pids=pids) + f" echo $$ > {pids}/leader; " + then
    write_ws(project / "w", "escape", run=command, **fields)
    return pids


def _pids(pids: Path) -> dict[str, int]:
    return {p.name: int(p.read_text()) for p in pids.iterdir() if p.read_text().strip()}


def _spawned(pids: Path) -> dict[str, int]:
    """Wait until the command and its escapee have both written their pid."""
    return wait_for(lambda: (found := _pids(pids)) and len(found) == 2 and found)


def _start(project: Path) -> subprocess.Popen:
    # A session of its own, like a shell job: its process group is what a terminal signals.
    return subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-q"], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _check_contained(project: Path, pids: dict[str, int], mode: str) -> None:
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) is still running"
    run = state(project).latest_run()
    assert (run["cgroup"] is not None) == (mode == "cgroup")
    if run["cgroup"]:
        assert not Path(run["cgroup"]).exists(), "the run's cgroup was not removed"


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_escapee_is_stopped_when_the_attempt_ends(project, kind, mode):
    _escaping_ws(project, kind, f"until [ -s {project}/pids/escapee ]; do sleep 0.01; done")
    proc = agentrun("run", "w", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pids = _pids(project / "pids")
    assert set(pids) == {"escapee", "leader"}
    _check_contained(project, pids, mode)


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_escapee_is_stopped_when_the_attempt_times_out(project, kind, mode):
    _escaping_ws(project, kind, "sleep 300", timeout="1s")
    proc = agentrun("run", "w", cwd=project)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    db = state(project)
    (attempt,) = db.attempts(db.latest_run()["id"])
    assert attempt["status"] == "timeout"
    _check_contained(project, _pids(project / "pids"), mode)


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_escapee_is_stopped_by_ctrl_c(project, kind, mode):
    pids = _escaping_ws(project, kind, "sleep 300")
    proc = _start(project)
    spawned = _spawned(pids)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    proc.communicate(timeout=60)
    assert proc.returncode == 130, proc.stderr
    db = state(project)
    run = db.latest_run()
    assert run["status"] == "interrupted"
    assert db.workstreams(run["id"])["escape"]["status"] == "interrupted"
    _check_contained(project, spawned, mode)


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_escapee_is_stopped_when_its_worker_is_killed(project, kind, mode):
    pids = _escaping_ws(project, kind, "sleep 300")
    proc = _start(project)
    spawned = _spawned(pids)
    (worker,) = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    db = state(project)
    run_id = db.latest_run()["id"]
    assert [a["status"] for a in db.attempts(run_id)] == ["crashed"]
    _check_contained(project, spawned, mode)


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_recover_stops_the_escapee_after_the_orchestrator_is_killed(project, kind, mode):
    pids = _escaping_ws(project, kind, "sleep 300")
    proc = _start(project)
    spawned = _spawned(pids)
    os.kill(proc.pid, signal.SIGKILL)  # the orchestrator only; its worker lives on, orphaned
    proc.wait(timeout=60)  # (its output pipes stay open in the worker)
    assert all(pid_alive(pid) for pid in spawned.values())
    run_id = state(project).latest_run()["id"]
    out = agentrun("recover", run_id, cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    assert state(project).workstreams(run_id)["escape"]["status"] == "lost"
    _check_contained(project, spawned, mode)


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_recover_stops_the_escapee_after_orchestrator_and_worker_are_killed(project, kind, mode):
    if mode == "subreaper" and kind == "setsid-env-i":
        pytest.skip("without a cgroup, a process in a session of its own, without AGENTRUN_RUN_ID, whose "
                    "worker and orchestrator are both gone, cannot be found (README: Containment)")
    pids = _escaping_ws(project, kind, "sleep 300")
    proc = _start(project)
    spawned = _spawned(pids)
    os.killpg(proc.pid, signal.SIGKILL)  # orchestrator and worker; the command has a session of its own
    proc.wait(timeout=60)
    assert all(pid_alive(pid) for pid in spawned.values())
    out = agentrun("recover", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    _check_contained(project, spawned, mode)
