"""Isolation and integration, end to end: real git repositories, the real CLI in a subprocess.

Each test builds a repository in ``tmp_path``, writes workstream files into
``w/`` (ignored through .git/info/exclude so the checkout stays clean), runs
``python -m agentrun run w ...`` and checks the outcome with git commands and
the state DB. Where workstreams must overlap in time (to force a rebase or a
conflict) their commands meet at a file barrier (see ``gitutil.BARRIER_SH``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import events, write_ws
from gitutil import (BARRIER_SH, DB, all_refs, commits, exists_at, git, init_repo, json_col, out, rescue_refs,
                     rev, show, worktree_paths)

BASE_FILES = {"a.txt": "line\n", "b.txt": "bee\n", "README": "project\n"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "repo", BASE_FILES)


@pytest.fixture
def barrier(tmp_path: Path):
    """``barrier(n)`` -> a shell snippet that waits until n workstream commands have reached it."""
    script = tmp_path / "barrier.sh"
    script.write_text(BARRIER_SH)
    made = []

    def make(n: int) -> str:
        where = tmp_path / f"barrier{len(made)}"
        where.mkdir()
        made.append(where)
        return f'sh "{script}" "{where}" {n}'
    return make


class RunTimeout(AssertionError):
    pass


def agentrun(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, in its own session so nothing it leaves behind outlives the test.

    A run that does not finish in ``timeout`` is stopped and fails the test with its output.
    """
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", *map(str, args)], cwd=cwd, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        raise RunTimeout(f"agentrun {' '.join(map(str, args))} did not finish in {timeout:g}s\n"
                         f"stdout:\n{stdout}\nstderr:\n{stderr}") from None
    finally:
        _kill_group(proc.pid)   # worker processes left behind by a killed orchestrator, if any
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(repo: Path, *extra: str, workers: int = 2) -> subprocess.CompletedProcess:
    return agentrun("run", "w", "--parallel", "--max-workers", workers, "-q", *extra, cwd=repo)


def outcome(repo: Path):
    """(run row, {ws_id: workstream row}) of the latest run."""
    db = DB(repo)
    try:
        run_row = db.run()
        return run_row, db.workstreams(run_row["id"])
    finally:
        db.close()


def gate_rows(repo: Path, run_id: str, ws_id: str) -> list[dict]:
    db = DB(repo)
    try:
        return [dict(r) for r in db.gates(run_id, ws_id)]
    finally:
        db.close()


def attempt_rows(repo: Path, run_id: str, ws_id: str) -> list[dict]:
    db = DB(repo)
    try:
        return [dict(r) for r in db.attempts(run_id, ws_id)]
    finally:
        db.close()


def tip(repo: Path, run_row) -> str:
    return rev(repo, run_row["integration_branch"])


def statuses(rows) -> dict[str, str]:
    return {ws: r["status"] for ws, r in rows.items()}


def wait_for_integration_past(rev_expr: str) -> str:
    """Shell: wait (bounded) until the run's integration branch is no longer at ``rev_expr``."""
    return ('i=0; while [ "$(git -C "$AGENTRUN_WORKTREE" rev-parse "agentrun/$AGENTRUN_RUN_ID/integration")" '
            f'= "$(git -C "$AGENTRUN_WORKTREE" rev-parse {rev_expr})" ]; do i=$((i+1)); '
            '[ $i -lt 1500 ] || exit 98; sleep 0.02; done')


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


# --- landing results -------------------------------------------------------------------------

def test_workstreams_editing_different_files_each_land_as_their_own_commit(repo, barrier):
    both = barrier(2)   # both start from the base commit, so the second to finish is rebased
    write_ws(repo / "w", "one", run=f"printf 'one\\n' > a.txt && {both}", files=["a.txt"])
    write_ws(repo / "w", "two", run=f"printf 'two\\n' > b.txt && {both}", files=["b.txt"])

    proc = run(repo)

    assert proc.returncode == 0, explain(proc)
    run_row, rows = outcome(repo)
    assert statuses(rows) == {"one": "done", "two": "done"}
    head = tip(repo, run_row)
    landed = commits(repo, run_row["base_commit"], head)
    assert len(landed) == 2
    by_ws = {c["trailers"][0].split("/", 1)[1]: c for c in landed}
    assert sorted(by_ws) == ["one", "two"]
    assert by_ws["one"]["files"] == ["a.txt"] and by_ws["two"]["files"] == ["b.txt"]
    assert all(len(c["parents"]) == 1 for c in landed), "rebased, not merged: a linear history"
    assert show(repo, f"{head}:a.txt") == "one\n"
    assert show(repo, f"{head}:b.txt") == "two\n"
    assert {rows[w]["integrated_commit"] for w in rows} == {c["sha"] for c in landed}
    # Without --into the user's branch and checkout are untouched; integrated worktrees are gone.
    assert rev(repo, "main") == run_row["base_commit"]
    assert (repo / "a.txt").read_text() == "line\n"
    assert worktree_paths(repo) == [repo.resolve()]


def test_same_line_edits_conflict_one_lands_and_the_other_is_recorded_as_conflict(repo, barrier):
    # No `files`: overlapping declarations would make the scheduler serialise them (a predicted
    # conflict), and the point here is the conflict nobody predicted.
    both = barrier(2)
    write_ws(repo / "w", "left", run=f"printf 'left\\n' > a.txt && {both}")
    write_ws(repo / "w", "right", run=f"printf 'right\\n' > a.txt && {both}")

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    run_row, rows = outcome(repo)
    assert sorted(statuses(rows).values()) == ["conflict", "done"]
    winner = next(w for w, r in rows.items() if r["status"] == "done")
    loser = next(w for w, r in rows.items() if r["status"] == "conflict")
    assert json_col(rows[loser]["conflict_files"]) == ["a.txt"]
    assert json_col(rows[loser]["conflict_with"]) == [winner]
    assert rows[loser]["integrated_commit"] is None

    head = tip(repo, run_row)
    assert show(repo, f"{head}:a.txt") == f"{winner}\n"
    assert [c["trailers"] for c in commits(repo, run_row["base_commit"], head)] == [[f"{run_row['id']}/{winner}"]]
    markers = git(repo, "grep", "-n", "-E", "^(<<<<<<<|=======|>>>>>>>)", head, check=False)
    assert markers.returncode == 1, f"conflict markers on the integration branch:\n{markers.stdout}"
    assert out(repo, "status", "--porcelain") == ""

    conflict_events = [e for e in events(repo, run_row["id"]) if e["type"] == "ws_conflict"]
    assert [(e["ws_id"], e["files"], e["conflict_with"]) for e in conflict_events] == [(loser, ["a.txt"], [winner])]
    # The losing result is not destroyed: its worktree is kept, clean (rebase aborted), its commit on its branch.
    kept = Path(rows[loser]["worktree"])
    assert kept.is_dir()
    assert out(kept, "status", "--porcelain") == ""
    assert not Path(out(kept, "rev-parse", "--git-path", "rebase-merge")).exists()
    assert show(repo, f"{rows[loser]['branch']}:a.txt") == f"{loser}\n"


# --- verification: gates, scope, changes ---------------------------------------------------

def test_failing_gate_keeps_the_result_off_the_integration_branch(repo):
    write_ws(repo / "w", "gated", run="printf 'gated\\n' > a.txt", files=["a.txt"], gates=["exit 3"])
    write_ws(repo / "w", "fine", run="printf 'fine\\n' > b.txt", files=["b.txt"], gates=["grep -q fine b.txt"])

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    run_row, rows = outcome(repo)
    assert statuses(rows) == {"gated": "failed", "fine": "done"}
    assert "gate failed: exit 3" in rows["gated"]["error"]
    assert rows["gated"]["integrated_commit"] is None
    assert [(g["phase"], g["gate"], g["status"], g["exit_code"]) for g in gate_rows(repo, run_row["id"], "gated")] \
        == [("verify", "exit 3", "failed", 3)]
    # The passing gate ran against the workstream's result (in its worktree).
    assert [(g["phase"], g["status"]) for g in gate_rows(repo, run_row["id"], "fine")] == [("verify", "passed")]
    failed = [e for e in events(repo, run_row["id"]) if e["type"] == "gate_failed"]
    assert [(e["ws_id"], e["gate"]) for e in failed] == [("gated", "exit 3")]

    head = tip(repo, run_row)
    assert [c["trailers"] for c in commits(repo, run_row["base_commit"], head)] == [[f"{run_row['id']}/fine"]]
    assert show(repo, f"{head}:a.txt") == "line\n"
    # The gated result still exists on its own branch, for inspection.
    assert show(repo, f"{rows['gated']['branch']}:a.txt") == "gated\n"


def test_change_outside_files_fails_the_scope_check(repo):
    write_ws(repo / "w", "sprawl", run="printf 'x\\n' > a.txt && printf 'stray\\n' > c.txt", files=["a.txt"])

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    run_row, rows = outcome(repo)
    assert rows["sprawl"]["status"] == "failed"
    assert rows["sprawl"]["error"].startswith("scope:") and "c.txt" in rows["sprawl"]["error"]
    assert "a.txt" not in rows["sprawl"]["error"]
    assert tip(repo, run_row) == run_row["base_commit"]


def test_scope_warn_lands_the_change_and_logs_a_warning(repo):
    write_ws(repo / "w", "sprawl", run="printf 'x\\n' > a.txt && printf 'stray\\n' > c.txt", files=["a.txt"],
             scope="warn")

    proc = run(repo)

    assert proc.returncode == 0, explain(proc)
    run_row, rows = outcome(repo)
    assert rows["sprawl"]["status"] == "done"
    assert show(repo, f"{tip(repo, run_row)}:c.txt") == "stray\n"
    log = Path(attempt_rows(repo, run_row["id"], "sprawl")[-1]["log_path"]).read_text()
    assert "warning: scope" in log and "c.txt" in log


def test_empty_diff_fails_when_files_are_declared(repo):
    write_ws(repo / "w", "noop", run="true", files=["a.txt"])
    write_ws(repo / "w", "readonly", run="true", files=["a.txt"], expect_changes=False)

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    run_row, rows = outcome(repo)
    assert statuses(rows) == {"noop": "failed", "readonly": "done"}
    assert "no changes" in rows["noop"]["error"]
    assert tip(repo, run_row) == run_row["base_commit"]


def test_baseline_gate_failing_on_the_base_commit_is_pre_existing_and_does_not_fail(tmp_path):
    repo = init_repo(tmp_path / "repo", {**BASE_FILES, "broken.txt": "already broken\n"})
    write_ws(repo / "w", "tolerant", run="printf 'new\\n' > a.txt", files=["a.txt"],
             gates=["test ! -e broken.txt"], baseline_gates=True)
    # Baseline gates only excuse what was already failing: a gate this change breaks still fails.
    write_ws(repo / "w", "breaker", run="printf 'x\\n' > newly-broken.txt", files=["newly-broken.txt"],
             gates=["test ! -e newly-broken.txt"], baseline_gates=True)

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    run_row, rows = outcome(repo)
    assert statuses(rows) == {"tolerant": "done", "breaker": "failed"}
    tolerant = gate_rows(repo, run_row["id"], "tolerant")
    assert ("baseline", "test ! -e broken.txt", "pre-existing") in {(g["phase"], g["gate"], g["status"])
                                                                   for g in tolerant}
    assert show(repo, f"{tip(repo, run_row)}:a.txt") == "new\n"
    breaker = gate_rows(repo, run_row["id"], "breaker")
    assert [(g["phase"], g["status"]) for g in breaker] == [("baseline", "passed"), ("verify", "failed")]
    assert "gate failed" in rows["breaker"]["error"]


def test_a_pre_existing_gate_failure_is_recorded_once_per_run_and_not_as_failed(tmp_path):
    """A done workstream's gate results should not say 'failed' for the gate that was excused."""
    repo = init_repo(tmp_path / "repo", {**BASE_FILES, "broken.txt": "already broken\n"})
    write_ws(repo / "w", "tolerant", run="printf 'new\\n' > a.txt", files=["a.txt"],
             gates=["test ! -e broken.txt"], baseline_gates=True)

    proc = run(repo)

    assert proc.returncode == 0, explain(proc)
    run_row, rows = outcome(repo)
    assert rows["tolerant"]["status"] == "done"
    recorded = [(g["phase"], g["status"]) for g in gate_rows(repo, run_row["id"], "tolerant")]
    phases = [phase for phase, _ in recorded]
    assert sorted(set(phases)) == sorted(phases), f"one gate run recorded more than once: {recorded}"
    assert "failed" not in [status for _, status in recorded], recorded
    gate_events = [e for e in events(repo, run_row["id"]) if e["type"] == "gate_failed"]
    assert gate_events == [], gate_events


def test_gate_after_merge_rejects_a_result_that_breaks_once_rebased(repo, barrier):
    both = barrier(2)
    write_ws(repo / "w", "first", run=f"printf 'changed\\n' > a.txt && {both}", files=["a.txt"])
    # `second` only finishes once `first` has landed, so it is rebased onto it; its gate passes
    # on its own result but not on the merged one.
    write_ws(repo / "w", "second", files=["b.txt"], gates=["grep -qx line a.txt"], gate_after_merge=True,
             run=f"printf 'bee2\\n' > b.txt && {both} && {wait_for_integration_past('HEAD')}")

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    run_row, rows = outcome(repo)
    assert statuses(rows) == {"first": "done", "second": "failed"}
    assert "after merge" in rows["second"]["error"]
    assert [(g["phase"], g["status"]) for g in gate_rows(repo, run_row["id"], "second")] \
        == [("verify", "passed"), ("after_merge", "failed")]
    assert tip(repo, run_row) == rows["first"]["integrated_commit"]
    assert rows["second"]["integrated_commit"] is None


# --- the merge queue under contention ------------------------------------------------------------

def test_eight_results_finishing_together_are_each_integrated_exactly_once_in_order(repo, barrier):
    n = 8
    together = barrier(n)
    for i in range(n):
        write_ws(repo / "w", f"ws{i}", run=f"printf '{i}\\n' > out{i}.txt && {together}", files=[f"out{i}.txt"])

    proc = run(repo, workers=n)

    assert proc.returncode == 0, explain(proc)
    run_row, rows = outcome(repo)
    run_id = run_row["id"]
    assert set(statuses(rows).values()) == {"done"}
    seqs = sorted(r["integration_seq"] for r in rows.values())
    assert seqs == list(range(1, n + 1))

    head = tip(repo, run_row)
    landed = commits(repo, run_row["base_commit"], head)
    log = out(repo, "log", "--format=%B", head)
    for ws in rows:
        assert log.count(f"Agentrun-Workstream: {run_id}/{ws}\n") == 1, ws
    in_branch_order = [c["trailers"] for c in landed]
    in_seq_order = [[f"{run_id}/{ws}"] for ws, r in sorted(rows.items(), key=lambda kv: kv[1]["integration_seq"])]
    assert in_branch_order == in_seq_order
    assert [c["sha"] for c in landed] == [r["integrated_commit"] for r in
                                          sorted(rows.values(), key=lambda r: r["integration_seq"])]
    assert all(len(c["parents"]) == 1 for c in landed)
    for i in range(n):
        assert show(repo, f"{head}:out{i}.txt") == f"{i}\n"
    fsck = git(repo, "fsck", "--strict", "--no-progress", check=False)
    assert fsck.returncode == 0 and "error" not in fsck.stderr.lower(), fsck.stderr
    assert worktree_paths(repo) == [repo.resolve()]


def test_a_dependent_starts_from_its_dependencys_result(repo):
    write_ws(repo / "w", "first", run="mkdir -p out && printf 'from first\\n' > out/first.txt", files=["out/first.txt"])
    write_ws(repo / "w", "second", depends_on=["first"],
             run="test -f out/first.txt && cp out/first.txt out/second.txt", files=["out/second.txt"])

    proc = run(repo)

    assert proc.returncode == 0, explain(proc)
    run_row, rows = outcome(repo)
    assert statuses(rows) == {"first": "done", "second": "done"}
    assert rows["second"]["base_commit"] == rows["first"]["integrated_commit"]
    assert show(repo, f"{tip(repo, run_row)}:out/second.txt") == "from first\n"


# --- --into ------------------------------------------------------------------------------------

def test_into_main_fast_forwards_the_checked_out_branch_and_its_working_tree(repo):
    write_ws(repo / "w", "one", run="printf 'one\\n' > a.txt", files=["a.txt"])
    write_ws(repo / "w", "two", run="printf 'two\\n' > b.txt", files=["b.txt"])

    proc = run(repo, "--into", "main")

    assert proc.returncode == 0, explain(proc)
    run_row, _ = outcome(repo)
    assert rev(repo, "main") == tip(repo, run_row) != run_row["base_commit"]
    assert out(repo, "symbolic-ref", "--short", "HEAD") == "main"
    assert (repo / "a.txt").read_text() == "one\n" and (repo / "b.txt").read_text() == "two\n"
    assert out(repo, "status", "--porcelain") == ""
    assert "fast-forwarded main" in proc.stdout


def test_into_leaves_main_alone_when_a_workstream_fails(repo):
    write_ws(repo / "w", "good", run="printf 'good\\n' > a.txt", files=["a.txt"])
    write_ws(repo / "w", "bad", run="printf 'bad\\n' > b.txt; exit 1", files=["b.txt"])

    proc = run(repo, "--into", "main")

    assert proc.returncode == 1, explain(proc)
    run_row, rows = outcome(repo)
    assert statuses(rows) == {"good": "done", "bad": "failed"}
    assert rev(repo, "main") == run_row["base_commit"]
    assert tip(repo, run_row) != run_row["base_commit"], "the good result is still on the integration branch"
    assert (repo / "a.txt").read_text() == "line\n"
    assert "not updating main" in proc.stdout


def test_into_a_branch_that_is_not_checked_out_moves_only_that_branch(repo):
    git(repo, "branch", "other")
    write_ws(repo / "w", "one", run="printf 'one\\n' > a.txt", files=["a.txt"])

    proc = run(repo, "--into", "other")

    assert proc.returncode == 0, explain(proc)
    run_row, _ = outcome(repo)
    assert rev(repo, "other") == tip(repo, run_row) != run_row["base_commit"]
    assert rev(repo, "main") == run_row["base_commit"]
    assert out(repo, "symbolic-ref", "--short", "HEAD") == "main"
    assert (repo / "a.txt").read_text() == "line\n"
    assert out(repo, "status", "--porcelain") == ""


def test_into_refuses_to_move_a_branch_that_moved_during_the_run(repo):
    # The workstream itself commits to main in the main checkout while the run is going on.
    write_ws(repo / "w", "meddler", files=["a.txt"],
             run=f"printf 'x\\n' > a.txt && git -C '{repo}' commit -q --allow-empty -m 'moved meanwhile'")

    proc = run(repo, "--into", "main")

    assert proc.returncode == 1, explain(proc)
    run_row, rows = outcome(repo)
    assert rows["meddler"]["status"] == "done"
    main = rev(repo, "main")
    assert main != tip(repo, run_row)
    assert out(repo, "log", "-1", "--format=%s", "main") == "moved meanwhile"
    assert "has moved since the run started" in proc.stderr
    assert (repo / "a.txt").read_text() == "line\n"


def test_into_a_branch_checked_out_in_another_worktree_does_not_leave_that_worktree_stale(repo, tmp_path):
    git(repo, "branch", "other")
    elsewhere = tmp_path / "elsewhere"
    git(repo, "worktree", "add", "-q", str(elsewhere), "other")
    write_ws(repo / "w", "one", run="printf 'one\\n' > a.txt", files=["a.txt"])

    proc = run(repo, "--into", "other")

    # Either agentrun refuses up front (exit 2, nothing moved) or it updates that checkout too;
    # it must not move the branch under a checkout and leave it showing reversed changes.
    if proc.returncode == 2:
        assert rev(repo, "other") == rev(repo, "main")
    else:
        assert proc.returncode == 0, explain(proc)
        run_row, _ = outcome(repo)
        assert rev(repo, "other") == tip(repo, run_row)
    assert out(elsewhere, "status", "--porcelain") == ""


def test_into_is_not_silently_ignored_when_nothing_is_isolated(repo):
    """--into with only isolation = "none" work: there is nothing to fast-forward; refuse, or say so."""
    write_ws(repo / "w", "inplace", run="true", isolation="none")

    proc = run(repo, "--into", "main")

    said = proc.stdout + proc.stderr
    assert proc.returncode == 2 or re.search(r"\bmain\b", said), explain(proc)


# --- nothing is lost ------------------------------------------------------------------------------

def test_retry_replaces_the_worktree_and_rescues_the_failed_attempts_changes(repo):
    write_ws(repo / "w", "flaky", retries=1, retry_backoff="0s", files=["a.txt"],
             run='if [ "$AGENTRUN_ATTEMPT" = 1 ]; then printf "half done\\n" > scratch.txt; '
                 'printf "half\\n" > a.txt; exit 1; fi; '
                 'test ! -e scratch.txt && printf "fixed\\n" > a.txt')

    proc = run(repo)

    assert proc.returncode == 0, explain(proc)
    run_row, rows = outcome(repo)
    run_id = run_row["id"]
    assert rows["flaky"]["status"] == "done"
    assert [a["status"] for a in attempt_rows(repo, run_id, "flaky")] == ["failed", "done"]
    refs = rescue_refs(repo, f"refs/agentrun/rescue/{run_id}/flaky/")
    assert len(refs) == 1, refs
    assert show(repo, f"{refs[0]}:scratch.txt") == "half done\n"
    assert show(repo, f"{refs[0]}:a.txt") == "half\n"
    head = tip(repo, run_row)
    assert show(repo, f"{head}:a.txt") == "fixed\n"
    assert not exists_at(repo, f"{head}:scratch.txt")


def test_clean_rescues_uncommitted_changes_of_a_kept_worktree(repo):
    write_ws(repo / "w", "broken", files=["a.txt"],
             run="printf 'wip\\n' > a.txt && printf 'notes\\n' > notes.txt && exit 1")

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    run_row, rows = outcome(repo)
    kept = Path(rows["broken"]["worktree"])
    assert kept.is_dir() and (kept / "notes.txt").is_file()
    assert str(kept) in proc.stdout  # listed as kept for inspection

    cleaned = agentrun("clean", cwd=repo)

    assert cleaned.returncode == 0, explain(cleaned)
    assert "rescued" in cleaned.stdout
    assert not kept.exists()
    assert kept not in worktree_paths(repo)
    ref = f"refs/agentrun/rescue/{run_row['id']}/broken/clean"
    assert rescue_refs(repo) == [ref]
    assert show(repo, f"{ref}:notes.txt") == "notes\n"
    assert show(repo, f"{ref}:a.txt") == "wip\n"
    assert rev(repo, f"{ref}~1") == run_row["base_commit"]
    _, rows = outcome(repo)
    assert rows["broken"]["worktree"] is None


def test_gate_leftovers_in_an_integrated_worktree_are_rescued_not_integrated(repo):
    write_ws(repo / "w", "reporting", run="printf 'new\\n' > a.txt", files=["a.txt"],
             gates=["printf 'report\\n' > gate-report.txt"])

    proc = run(repo)

    assert proc.returncode == 0, explain(proc)
    run_row, rows = outcome(repo)
    assert rows["reporting"]["status"] == "done"
    assert not exists_at(repo, f"{tip(repo, run_row)}:gate-report.txt")
    refs = rescue_refs(repo)
    assert len(refs) == 1, refs
    assert show(repo, f"{refs[0]}:gate-report.txt") == "report\n"
    assert worktree_paths(repo) == [repo.resolve()]


def test_a_gate_that_dirties_a_tracked_file_is_not_reported_as_a_merge_conflict(repo, barrier):
    """The second result to integrate must be rebased; leftovers of its gate must not turn that into a 'conflict'."""
    both = barrier(2)
    write_ws(repo / "w", "first", run=f"printf 'first\\n' > a.txt && {both}", files=["a.txt"])
    # `second` waits in its gate until `first` has landed, so it is the one that needs rebasing.
    write_ws(repo / "w", "second", run=f"printf 'second\\n' > b.txt && {both}", files=["b.txt"],
             gates=[f"{wait_for_integration_past('HEAD~1')} && printf 'touched by gate\\n' > README"])

    proc = run(repo)

    run_row, rows = outcome(repo)
    second = rows["second"]
    assert second["status"] != "conflict", (second["error"], second["conflict_files"])
    assert proc.returncode == 0, explain(proc)
    assert show(repo, f"{tip(repo, run_row)}:b.txt") == "second\n"


# --- bad configuration: clear error, exit 2, nothing changed ----------------------------------------

def test_worktree_isolation_outside_a_git_repository_is_refused(project, tmp_path):
    sentinel = tmp_path / "ran"
    write_ws(project / "w", "iso", run=f"touch '{sentinel}'", isolation="worktree")

    proc = agentrun("run", "w", "--parallel", "--max-workers", 2, "-q", cwd=project)

    assert proc.returncode == 2, explain(proc)
    assert "isolation" in proc.stderr and "git repository" in proc.stderr and "iso" in proc.stderr
    assert not (project / ".agentrun").exists()
    assert not sentinel.exists()


def test_into_an_unknown_branch_is_refused_before_anything_runs(repo, tmp_path):
    sentinel = tmp_path / "ran"
    write_ws(repo / "w", "one", run=f"touch '{sentinel}'")
    before = all_refs(repo)

    proc = run(repo, "--into", "nosuchbranch")

    assert proc.returncode == 2, explain(proc)
    assert "nosuchbranch" in proc.stderr and "unknown branch" in proc.stderr
    assert not (repo / ".agentrun").exists()
    assert all_refs(repo) == before
    assert not sentinel.exists()


def test_into_a_dirty_checked_out_branch_is_refused_before_anything_runs(repo, tmp_path):
    sentinel = tmp_path / "ran"
    write_ws(repo / "w", "one", run=f"touch '{sentinel}'")
    (repo / "README").write_text("local edit\n")
    before = all_refs(repo)

    proc = run(repo, "--into", "main")

    assert proc.returncode == 2, explain(proc)
    assert "uncommitted changes" in proc.stderr and "main" in proc.stderr
    assert not (repo / ".agentrun").exists()
    assert all_refs(repo) == before
    assert (repo / "README").read_text() == "local edit\n"
    assert not sentinel.exists()


# --- running in place ------------------------------------------------------------------------------

def test_isolation_none_runs_in_the_project_directory(repo):
    write_ws(repo / "w", "inplace", isolation="none",
             run='pwd -P > where.txt && printf "[%s]" "$AGENTRUN_WORKTREE" > worktree-var.txt')

    proc = run(repo)

    assert proc.returncode == 0, explain(proc)
    assert (repo / "where.txt").read_text().strip() == str(repo.resolve())
    assert (repo / "worktree-var.txt").read_text() == "[]"
    assert worktree_paths(repo) == [repo.resolve()]
    assert rev(repo, "main") == out(repo, "rev-list", "--max-parents=0", "HEAD")


def test_outside_git_workstreams_run_in_place_with_a_single_note(project):
    write_ws(project / "w", "one", run="pwd -P > one.txt")
    write_ws(project / "w", "two", run="pwd -P > two.txt")

    proc = agentrun("run", "w", "--parallel", "--max-workers", 2, "-q", cwd=project)

    assert proc.returncode == 0, explain(proc)
    for name in ("one.txt", "two.txt"):
        assert (project / name).read_text().strip() == str(project.resolve())
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "not a git repository" in notes[0], proc.stderr
    assert not (project / ".agentrun" / "worktrees").exists() or not any((project / ".agentrun" / "worktrees").iterdir())


# --- on_conflict = "retry" -----------------------------------------------------------------------

def test_on_conflict_retry_reruns_the_loser_from_the_new_tip_with_the_conflicting_files(repo, barrier, tmp_path):
    both = barrier(2)
    seen = tmp_path / "seen"
    seen.mkdir()
    # First attempt: both edit the same line. On the conflict retry, record what we were told and
    # put the work somewhere else, so the retry lands.
    command = ('if [ -n "${AGENTRUN_CONFLICT_FILES:-}" ]; then '
               f'printf "%s" "$AGENTRUN_CONFLICT_FILES" > "{seen}/$AGENTRUN_WS_ID"; '
               'printf "%s\\n" "$AGENTRUN_WS_ID" > "$AGENTRUN_WS_ID.txt"; '
               f'else printf "%s\\n" "$AGENTRUN_WS_ID" > a.txt && {both}; fi')
    for ws in ("left", "right"):
        write_ws(repo / "w", ws, run=command, on_conflict="retry")

    proc = run(repo)

    assert proc.returncode == 0, explain(proc)
    run_row, rows = outcome(repo)
    assert statuses(rows) == {"left": "done", "right": "done"}
    retried = [p.name for p in seen.iterdir()]
    assert len(retried) == 1, retried
    loser = retried[0]
    winner = ({"left", "right"} - {loser}).pop()
    assert (seen / loser).read_text() == "a.txt"
    assert [a["status"] for a in attempt_rows(repo, run_row["id"], loser)] == ["conflict", "done"]
    assert [a["status"] for a in attempt_rows(repo, run_row["id"], winner)] == ["done"]
    head = tip(repo, run_row)
    assert show(repo, f"{head}:a.txt") == f"{winner}\n"
    assert show(repo, f"{head}:{loser}.txt") == f"{loser}\n"
    assert rows[loser]["integration_seq"] == 2 and rows[winner]["integration_seq"] == 1


# --- more integration outcomes ---------------------------------------------------------------

def test_merge_strategy_merges_onto_the_tip_and_lands_both_results(repo, barrier):
    both = barrier(2)
    write_ws(repo / "w", "first", run=f"printf 'one\\n' > a.txt && {both}", files=["a.txt"])
    write_ws(repo / "w", "second", files=["b.txt"], merge="merge",
             run=f"printf 'two\\n' > b.txt && {both} && {wait_for_integration_past('HEAD')}")

    proc = run(repo)

    assert proc.returncode == 0, explain(proc)
    run_row, rows = outcome(repo)
    head = tip(repo, run_row)
    assert rows["second"]["integrated_commit"] == head
    assert len(out(repo, "rev-list", "--parents", "-n1", head).split()) == 3, "a merge commit"
    assert show(repo, f"{head}:a.txt") == "one\n" and show(repo, f"{head}:b.txt") == "two\n"
    log = out(repo, "log", "--format=%B", head)
    for ws in ("first", "second"):
        assert log.count(f"Agentrun-Workstream: {run_row['id']}/{ws}\n") == 1


def test_dependents_of_a_conflicted_workstream_are_blocked(repo, barrier):
    both = barrier(2)
    write_ws(repo / "w", "left", run=f"printf 'left\\n' > a.txt && {both}")
    write_ws(repo / "w", "right", run=f"printf 'right\\n' > a.txt && {both}")
    write_ws(repo / "w", "after", depends_on=["left", "right"], run="true")

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    _, rows = outcome(repo)
    assert sorted([rows["left"]["status"], rows["right"]["status"]]) == ["conflict", "done"]
    assert rows["after"]["status"] == "blocked", dict(rows["after"])


def test_copied_untracked_files_are_not_committed_as_part_of_the_result(repo):
    (repo / "local.cfg").write_text("secret=1\n")    # untracked, not ignored: e.g. a local config
    write_ws(repo / "w", "uses-config", run="grep -q secret local.cfg && printf 'new\\n' > a.txt",
             copy_untracked=["local.cfg"])

    proc = run(repo)

    assert proc.returncode == 0, explain(proc)
    run_row, rows = outcome(repo)
    assert json_col(rows["uses-config"]["changed_files"]) == ["a.txt"]
    assert not exists_at(repo, f"{tip(repo, run_row)}:local.cfg")


def test_every_integrated_commit_is_the_workstreams_own(repo, barrier):
    """Two results with the same change: the second adds nothing; it must not be credited with the first's commit."""
    both = barrier(2)
    for ws in ("one", "two"):
        write_ws(repo / "w", ws, run=f"printf 'same\\n' > a.txt && {both}")

    proc = run(repo)

    assert proc.returncode == 0, explain(proc)
    run_row, rows = outcome(repo)
    assert show(repo, f"{tip(repo, run_row)}:a.txt") == "same\n"
    for ws, r in rows.items():
        if r["integrated_commit"]:
            body = out(repo, "show", "-s", "--format=%B", r["integrated_commit"])
            assert f"Agentrun-Workstream: {run_row['id']}/{ws}" in body, (ws, r["integrated_commit"], body)


def test_a_conflict_settles_its_wave_so_later_waves_still_run(repo, barrier):
    both = barrier(2)
    write_ws(repo / "w", "left", run=f"printf 'left\\n' > a.txt && {both}")
    write_ws(repo / "w", "right", run=f"printf 'right\\n' > a.txt && {both}")
    write_ws(repo / "w", "base", run="printf 'b\\n' > b.txt")
    write_ws(repo / "w", "later", depends_on=["base"], run="printf 'later\\n' > later.txt")

    try:
        proc = agentrun("run", "w", "--parallel", "--max-workers", 3, "-q", "--schedule", "waves",
                        cwd=repo, timeout=30)
    except RunTimeout as exc:
        _, rows = outcome(repo)
        pytest.fail(f"the run never finished: {statuses(rows)}\n{exc}")

    assert proc.returncode == 1, explain(proc)
    _, rows = outcome(repo)
    assert sorted([rows["left"]["status"], rows["right"]["status"]]) == ["conflict", "done"]
    assert rows["later"]["status"] == "done"


def test_clean_keeps_the_result_of_a_conflicted_workstream_reachable(repo, barrier):
    """The conflicted result is verified work nobody has merged yet: clean may drop the worktree, not the commit."""
    both = barrier(2)
    write_ws(repo / "w", "left", run=f"printf 'left\\n' > a.txt && {both}")
    write_ws(repo / "w", "right", run=f"printf 'right\\n' > a.txt && {both}")
    proc = run(repo)
    assert proc.returncode == 1, explain(proc)
    _, rows = outcome(repo)
    loser = next(r for r in rows.values() if r["status"] == "conflict")

    cleaned = agentrun("clean", cwd=repo)

    assert cleaned.returncode == 0, explain(cleaned)
    assert not Path(loser["worktree"]).exists()
    holders = out(repo, "for-each-ref", "--contains", loser["result_commit"], "--format=%(refname)")
    assert holders, f"{loser['ws_id']}'s result {loser['result_commit'][:12]} is reachable from no ref after clean"
