"""What a hostile or unlucky workstream must not be able to do to the user's repository: take over
agentrun's own refs, change files outside ``files`` unnoticed, put a copied secret into a ref,
run or read outside its worktree through a committed symlink; and what ``clean``, ``resume`` and
``--into`` must never get wrong."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_for, write_ws
from gitutil import git, init_repo, out, rescue_refs, rev, show
from test_git_integration import agentrun, attempt_rows, explain, outcome, run, tip

BASE_FILES = {"a.txt": "line\n", "o.txt": "other\n", "run.sh": "echo hi\n", "README": "project\n"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "repo", BASE_FILES)


def _commit(repo: Path, message: str = "more") -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


# --- refs ---------------------------------------------------------------------------------------
def test_a_workstream_named_integration_cannot_touch_the_integration_branch(repo):
    write_ws(repo / "w", "a", files=["a.txt"], run="echo merged-first > a.txt")
    # Its commit would delete what `a` merged, were it made on the integration branch itself.
    write_ws(repo / "w", "integration", files=["i.txt"], depends_on=["a"], run="echo i > i.txt")

    proc = run(repo)

    assert proc.returncode == 0, explain(proc)
    run_row, rows = outcome(repo)
    assert rows["integration"]["branch"] == f"agentrun/{run_row['id']}/ws/integration"
    head = tip(repo, run_row)
    assert show(repo, f"{head}:a.txt") == "merged-first\n"
    assert show(repo, f"{head}:i.txt") == "i\n"
    assert "2 results merged" in proc.stdout


# --- the scope check sees every kind of change ----------------------------------------------------
@pytest.mark.parametrize("change", [
    "git rm -q o.txt",                      # deletion
    "git mv o.txt moved.txt",               # rename: both paths
    "chmod +x run.sh",                      # mode change only
    "rm o.txt && ln -s a.txt o.txt",        # a file replaced by a symlink
])
def test_the_scope_check_sees_every_kind_of_change_outside_files(repo, change):
    write_ws(repo / "w", "sneaky", files=["a.txt"], run=f"echo x > a.txt && {change}")

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    run_row, rows = outcome(repo)
    assert rows["sneaky"]["status"] == "failed"
    assert rows["sneaky"]["error"].startswith("scope: changed files outside `files`")
    assert rows["sneaky"]["integrated_commit"] is None
    assert show(repo, f"{tip(repo, run_row)}:o.txt") == "other\n"


# --- clean and resume ------------------------------------------------------------------------------
def test_clean_all_abandons_a_resumable_run_and_resume_refuses_it_cleanly(repo):
    write_ws(repo / "w", "ok", files=["a.txt"], run="echo ok > a.txt")
    write_ws(repo / "w", "bad", files=["b.txt"], run="exit 3")
    write_ws(repo / "w", "later", files=["c.txt"], depends_on=["bad"], run="echo c > c.txt")
    assert run(repo).returncode == 1
    run_row, _ = outcome(repo)

    cleaned = agentrun("clean", "--all", cwd=repo)

    assert cleaned.returncode == 0, explain(cleaned)
    assert f"abandoned run {run_row['id']}" in cleaned.stdout
    assert rev(repo, run_row["integration_branch"]) is None
    listed = agentrun("recover", "--list", cwd=repo)
    assert run_row["id"] not in listed.stdout
    resumed = agentrun("resume", run_row["id"], "--accept-changes", cwd=repo)
    assert resumed.returncode == 2, explain(resumed)
    assert resumed.stderr.count("\n") == 1 and "abandoned" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert outcome(repo)[0]["status"] == "abandoned"


def test_resume_without_its_integration_branch_refuses_before_anything_runs(repo):
    write_ws(repo / "w", "bad", files=["b.txt"], run="exit 3")
    assert run(repo).returncode == 1
    run_row, _ = outcome(repo)
    git(repo, "branch", "-D", run_row["integration_branch"])
    write_ws(repo / "w", "bad", files=["b.txt"], run="echo b > b.txt")

    resumed = agentrun("resume", run_row["id"], "--accept-changes", cwd=repo)

    assert resumed.returncode == 2, explain(resumed)
    assert "integration branch" in resumed.stderr and "Traceback" not in resumed.stderr
    assert [a["status"] for a in attempt_rows(repo, run_row["id"], "bad")] == ["failed"]


def test_clean_without_all_keeps_what_resume_needs(repo):
    write_ws(repo / "w", "bad", files=["b.txt"], run="echo half > b.txt; exit 3")
    assert run(repo).returncode == 1
    run_row, _ = outcome(repo)

    assert agentrun("clean", cwd=repo).returncode == 0
    write_ws(repo / "w", "bad", files=["b.txt"], run="echo b > b.txt")
    resumed = agentrun("resume", run_row["id"], "--accept-changes", "-q", cwd=repo)

    assert resumed.returncode == 0, explain(resumed)
    assert show(repo, f"{tip(repo, outcome(repo)[0])}:b.txt") == "b\n"


# --- copy_untracked -----------------------------------------------------------------------------
@pytest.mark.parametrize("ignored", [True, False])
def test_copied_untracked_files_are_never_committed_rescued_or_in_any_ref(repo, ignored):
    secret = "SECRET=copied-untracked-4f1d9c"
    if ignored:
        (repo / ".gitignore").write_text(".env\n")
        _commit(repo, "ignore .env")
    (repo / ".env").write_text(secret + "\n")
    write_ws(repo / "w", "uses-env", files=["a.txt"], copy_untracked=[".env"],
             run="grep -q SECRET .env && echo used >> .env && echo changed > a.txt",
             gates=["grep -q SECRET .env"])
    write_ws(repo / "w", "fails", files=["a2.txt"], copy_untracked=[".env"], run="echo wip > a2.txt; exit 1")

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    run_row, rows = outcome(repo)
    assert rows["uses-env"]["status"] == "done"
    assert rows["fails"]["status"] == "failed"
    assert agentrun("clean", cwd=repo).returncode == 0   # rescues the failed worktree's changes
    assert rescue_refs(repo)                              # something was rescued ...
    history = out(repo, "log", "--all", "-p", "--format=%H %s")
    assert "a2.txt" in history and "changed" in history  # ... and the results are there
    assert "copied-untracked" not in history              # but never the copied file
    for ref in rescue_refs(repo):
        assert ".env" not in out(repo, "ls-tree", "-r", "--name-only", ref).split()


def test_copy_untracked_refuses_a_source_that_is_a_symlink_out_of_the_project(repo, tmp_path):
    outside = tmp_path / "outside.env"
    outside.write_text("SECRET=from-outside\n")
    (repo / ".env").symlink_to(outside)
    write_ws(repo / "w", "copy", files=["a.txt"], copy_untracked=[".env"], run="cat .env > a.txt")

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    _, rows = outcome(repo)
    assert "leads outside the project" in rows["copy"]["error"]
    assert "from-outside" not in out(repo, "log", "--all", "-p")


def test_copy_untracked_never_writes_through_a_committed_symlinked_directory(repo, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo / "conf").symlink_to(elsewhere)
    _commit(repo, "conf -> elsewhere")
    # In the project's working tree conf is a real directory holding an untracked file; in the
    # commit the worktree is made from, conf leads out of it.
    (repo / "conf").unlink()
    (repo / "conf").mkdir()
    (repo / "conf" / "local.cfg").write_text("k=v\n")
    write_ws(repo / "w", "copy", files=["a.txt"], copy_untracked=["conf/local.cfg"], run="echo x > a.txt")

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    _, rows = outcome(repo)
    assert "would be written outside the worktree" in rows["copy"]["error"]
    assert list(elsewhere.iterdir()) == []


# --- symlinks out of the worktree ------------------------------------------------------------------
def test_cwd_through_a_committed_symlink_is_refused(repo, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo / "sub").symlink_to(elsewhere)
    _commit(repo, "sub -> elsewhere")
    write_ws(repo / "w", "escape", cwd="sub", expect_changes=False, run="touch ran-here",
             gates=["touch gate-ran-here"])

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    _, rows = outcome(repo)
    assert "cwd: 'sub' leads outside the worktree" in rows["escape"]["error"]
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("entry", ["link.txt", "linkdir/**/*.txt"])
def test_files_through_a_committed_symlink_are_refused(repo, tmp_path, entry):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "t.txt").write_text("outside\n")
    (repo / "link.txt").symlink_to(elsewhere / "t.txt")
    (repo / "linkdir").symlink_to(elsewhere)
    _commit(repo, "links")
    write_ws(repo / "w", "writes", files=[entry], run="echo inside > a.txt")

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    _, rows = outcome(repo)
    assert "leads outside the worktree through a symlink" in rows["writes"]["error"]
    assert (elsewhere / "t.txt").read_text() == "outside\n"


# --- --into -----------------------------------------------------------------------------------
def test_into_another_branch_starts_from_that_branch_and_lands_on_it(repo):
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "feature.txt").write_text("only on feature\n")
    _commit(repo, "feature work")
    main_before = rev(repo, "main")
    write_ws(repo / "w", "work", files=["a.txt"], run="echo done > a.txt")

    proc = run(repo, "--into", "main")

    assert proc.returncode == 0, explain(proc)
    assert "the run starts from main" in proc.stderr
    run_row, _ = outcome(repo)
    assert run_row["base_commit"] == main_before
    assert git(repo, "merge-base", "--is-ancestor", main_before, "main").returncode == 0
    assert show(repo, "main:a.txt") == "done\n"
    assert git(repo, "cat-file", "-e", "main:feature.txt", check=False).returncode != 0
    assert rev(repo, "feature") != rev(repo, "main")   # the checked-out branch is untouched


def test_into_with_uncommitted_changes_elsewhere_is_not_confused_with_them(repo):
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "a.txt").write_text("dirty, uncommitted\n")
    write_ws(repo / "w", "work", files=["b.txt"], run="echo b > b.txt")

    proc = run(repo, "--into", "main")

    assert proc.returncode == 0, explain(proc)
    assert "uncommitted changes" not in proc.stderr   # main is what runs, and main is clean
    assert (repo / "a.txt").read_text() == "dirty, uncommitted\n"
    assert show(repo, "main:b.txt") == "b\n"


def test_stale_ref_locks_of_an_interrupted_run_do_not_stop_resume(repo):
    write_ws(repo / "w", "bad", files=["b.txt"], run="exit 3")
    assert run(repo).returncode == 1
    run_row, _ = outcome(repo)
    refs = Path(out(repo, "rev-parse", "--git-common-dir"))
    refs = (repo / refs if not refs.is_absolute() else refs) / "refs" / "heads" / "agentrun" / run_row["id"] / "ws"
    (refs / "bad.lock").write_text(rev(repo, "HEAD") + "\n")  # what a git killed mid-update leaves
    write_ws(repo / "w", "bad", files=["b.txt"], run="echo b > b.txt")

    resumed = agentrun("resume", run_row["id"], "--accept-changes", "-q", cwd=repo)

    assert resumed.returncode == 0, explain(resumed)
    assert not (refs / "bad.lock").exists()
    assert os.listdir(refs) == ["bad"]


def test_an_integration_branch_deleted_mid_run_fails_work_cleanly_without_a_traceback(repo):
    write_ws(repo / "w", "vandal", files=["a.txt"],
             run="git branch -D -q agentrun/$AGENTRUN_RUN_ID/integration && echo x > a.txt")
    write_ws(repo / "w", "next", files=["b.txt"], depends_on=["vandal"], run="echo b > b.txt")
    write_ws(repo / "w", "other", files=["c.txt"], run="echo c > c.txt", priority="low")

    proc = run(repo, workers=1)

    assert proc.returncode == 1, explain(proc)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stdout
    _, rows = outcome(repo)
    assert rows["vandal"]["status"] == "failed"
    assert rows["next"]["status"] == "blocked"
    assert rows["other"]["status"] == "failed"
    assert "integration branch" in rows["other"]["error"]


@pytest.mark.parametrize("replace", [
    'rm -rf "$TMPDIR" && ln -s {victim} "$TMPDIR"',                  # the lane's TMPDIR itself
    'rm -rf "$(dirname "$TMPDIR")" && ln -s {victim} "$(dirname "$TMPDIR")"',  # the tmp directory above it
    'rm -rf "$TMPDIR" && echo file > "$TMPDIR"',                      # a file in its place
])
def test_a_tmpdir_replaced_by_a_link_or_a_file_is_never_followed(repo, tmp_path, replace):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep\n")
    write_ws(repo / "w", "a", files=["a1.txt"], run=replace.format(victim=victim) + " && echo a > a1.txt")
    write_ws(repo / "w", "b", files=["b1.txt"], depends_on=["a"],
             run='test -d "$TMPDIR" && test ! -L "$TMPDIR" && test -z "$(ls -A "$TMPDIR")" && echo b > b1.txt')

    proc = run(repo, workers=1)

    assert proc.returncode == 0, explain(proc)
    assert (victim / "keep.txt").read_text() == "keep\n"
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]


def test_a_kill_during_git_worktree_add_does_not_stop_resume(repo, tmp_path):
    # A smudge filter that blocks the first checkout of the worktree: git worktree add is caught
    # half-way, its worktree registered and locked ("initializing"), as a kill -9 at that moment
    # leaves it on a big repository.
    entered, release = tmp_path / "entered", tmp_path / "release"
    git(repo, "config", "filter.slow.smudge",
        f"sh -c '[ -e {entered} ] || {{ touch {entered}; while [ ! -e {release} ]; do sleep 0.02; done; }}; cat'")
    git(repo, "config", "filter.slow.clean", "cat")
    (repo / ".gitattributes").write_text("*.slow filter=slow\n")
    (repo / "big.slow").write_text("content\n")
    _commit(repo, "a filtered file")
    write_ws(repo / "w", "one", files=["one.txt"], run="echo 1 > one.txt")
    proc = subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-q"], cwd=repo,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(entered.exists)
    os.killpg(proc.pid, signal.SIGKILL)    # orchestrator and worker; git has a process group of its own
    proc.wait()
    recovered = agentrun("recover", cwd=repo)
    assert recovered.returncode == 0, explain(recovered)
    release.touch()
    run_row, _ = outcome(repo)

    resumed = agentrun("resume", run_row["id"], "-q", cwd=repo)

    assert resumed.returncode == 0, explain(resumed)
    assert show(repo, f"{tip(repo, outcome(repo)[0])}:one.txt") == "1\n"
    assert "locked" not in out(repo, "worktree", "list")


def test_a_crash_after_integration_leaves_no_worktree_once_resumed(repo):
    write_ws(repo / "w", "one", files=["a.txt"], run="echo one > a.txt")
    crashed = subprocess.run([sys.executable, "-m", "agentrun", "run", "w", "-q"], cwd=repo, capture_output=True,
                             text=True, env={**os.environ, "AGENTRUN_CRASH_AT": "after-integration"}, timeout=120)
    assert crashed.returncode == -signal.SIGKILL
    run_row, rows = outcome(repo)
    assert rows["one"]["integrated_commit"] and (repo / ".agentrun" / "worktrees" / run_row["id"] / "one").is_dir()

    resumed = agentrun("resume", run_row["id"], cwd=repo)

    assert resumed.returncode == 0, explain(resumed)
    assert "kept for inspection" not in resumed.stdout
    _, rows = outcome(repo)
    assert rows["one"]["status"] == "done" and rows["one"]["worktree"] is None
    assert out(repo, "worktree", "list").count("\n") == 0      # the project's own checkout only


def test_clean_all_after_a_done_run_rescues_nothing(repo):
    for name in ("a", "b"):
        write_ws(repo / "w", name, files=[f"{name}.txt"], run=f"echo {name} > {name}.txt")
    assert run(repo).returncode == 0

    cleaned = agentrun("clean", "--all", cwd=repo)

    assert cleaned.returncode == 0, explain(cleaned)
    assert "rescued" not in cleaned.stdout and rescue_refs(repo) == []
    assert "removed 0 worktree(s), 3 branch(es)" in cleaned.stdout


def test_runs_started_at_once_after_the_clock_stepped_back_all_get_their_own_id(repo):
    write_ws(repo / "w", "one", files=["a.txt"], run="echo one > a.txt")
    assert run(repo).returncode == 0
    first = outcome(repo)[0]["id"]
    future = "20991231-235959-0000"   # the latest id recorded is ahead of the clock
    db = sqlite3.connect(repo / ".agentrun" / "state.db")
    with db:
        db.execute("UPDATE runs SET id = ? WHERE id = ?", (future, first))
        db.execute("UPDATE workstreams SET run_id = ? WHERE run_id = ?", (future, first))
    db.close()
    procs = [subprocess.Popen([sys.executable, "-m", "agentrun", "run", "w", "-q"], cwd=repo, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [code for code, _, _ in results] == [0] * 6, results
    ids = [r[0] for r in sqlite3.connect(repo / ".agentrun" / "state.db").execute("SELECT id FROM runs")]
    assert len(set(ids)) == 7 and all(i > future for i in ids if i != future)


def test_into_names_the_file_that_stops_the_fast_forward(repo):
    (repo / "z.txt").write_text("mine, untracked\n")
    write_ws(repo / "w", "makes-z", files=["z.txt"], run="echo theirs > z.txt")

    proc = run(repo, "--into", "main")

    assert proc.returncode == 1, explain(proc)
    assert "z.txt" in proc.stderr and proc.stderr.count("\n") == 1
    assert (repo / "z.txt").read_text() == "mine, untracked\n"


def test_into_one_of_agentruns_own_branches_is_refused(repo):
    write_ws(repo / "w", "one", files=["a.txt"], run="echo one > a.txt")
    assert run(repo).returncode == 0
    refs_before = out(repo, "for-each-ref")

    proc = run(repo, "--into", outcome(repo)[0]["integration_branch"])

    assert proc.returncode == 2 and "agentrun's own branches" in proc.stderr
    assert out(repo, "for-each-ref") == refs_before


def test_a_copied_file_the_command_commits_itself_is_refused_and_left_in_no_ref(repo):
    (repo / ".gitignore").write_text(".env\n")
    _commit(repo, "ignore .env")
    (repo / ".env").write_text("SECRET=committed-by-the-command-77\n")
    write_ws(repo / "w", "sneaky", files=["a.txt", ".env"], copy_untracked=[".env"], scope="off",
             run="git add -f .env && git commit -q -m mine && echo x > a.txt")

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    _, rows = outcome(repo)
    assert "contains the copied file(s) .env" in rows["sneaky"]["error"]
    assert "committed-by-the-command" not in out(repo, "log", "--all", "-p")


def test_copied_files_leave_no_object_in_the_repository(repo):
    (repo / "cred.txt").write_text("TOKEN=never-hashed-5521\n")   # untracked, not ignored
    write_ws(repo / "w", "uses", files=["a.txt"], copy_untracked=["cred.txt"], run="echo x > a.txt")
    write_ws(repo / "w", "fails", files=["b.txt"], copy_untracked=["cred.txt"], run="echo y > b.txt; exit 1")

    assert run(repo).returncode == 1
    assert agentrun("clean", cwd=repo).returncode == 0

    blob = git(repo, "hash-object", "cred.txt").stdout.strip()
    assert git(repo, "cat-file", "-e", blob, check=False).returncode != 0


def test_recover_list_says_a_run_without_its_integration_branch_cannot_be_resumed(repo):
    write_ws(repo / "w", "bad", files=["b.txt"], run="exit 3")
    write_ws(repo / "w", "wait", files=["c.txt"], run="echo c > c.txt", depends_on=["bad"])
    assert run(repo).returncode == 1
    run_row, _ = outcome(repo)
    db = sqlite3.connect(repo / ".agentrun" / "state.db")
    with db:
        db.execute("UPDATE runs SET status = 'interrupted' WHERE id = ?", (run_row["id"],))
    db.close()
    git(repo, "branch", "-D", run_row["integration_branch"])

    listed = agentrun("recover", "--list", cwd=repo)

    assert f"cannot be resumed: its integration branch {run_row['integration_branch']} is gone" in listed.stdout
    assert "queued again" not in listed.stdout


def test_a_cwd_that_is_a_symlink_loop_fails_with_a_plain_message(repo):
    (repo / "loop").symlink_to("loop")
    _commit(repo, "a loop")
    write_ws(repo / "w", "loopy", cwd="loop", expect_changes=False, run="true")

    proc = run(repo)

    assert proc.returncode == 1, explain(proc)
    assert outcome(repo)[1]["loopy"]["error"].startswith("cwd: 'loop' cannot be resolved (a symlink loop)")
