"""The merge queue: a verified result onto the run's integration branch, exactly once, and at
the end of a run the fast-forward of the user's branch (``--into``).

The merge queue is a file lock per run: results are integrated one at a time, in the order
their workers reach the lock, and the integration branch only ever moves by a
compare-and-swap of its ref.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from agentrun.store import crashpoints
from agentrun.git import repo as git
from agentrun.git.verify import GateRunner
from agentrun.git.worktrees import GitRun, Workspace, integration_tip, rescue_ref
from agentrun.spec.workstream import Workstream

TRAILER = "Agentrun-Workstream"


@dataclass
class Integrated:
    status: str                 # "integrated", "conflict", "failed", "cancelled"
    commit: str | None = None
    seq: int | None = None
    conflict_files: list[str] = field(default_factory=list)
    error: str | None = None


def integrate(gr: GitRun, run_id: str, ws: Workstream, wsp: Workspace, gates: GateRunner, workdir: Path,
              preexisting: set[str], on_integrated, log) -> Integrated:
    """The merge queue: bring the result onto the integration tip, re-gate if asked, advance.

    ``on_integrated(commit) -> seq`` records the integration durably while the
    lock is still held, so the recorded order is the order on the branch.
    """
    from filelock import FileLock  # see git.worktree_lock

    with FileLock(str(gr.lock_path)):
        tip = integration_tip(gr)
        done = already_integrated(gr, run_id, ws.id, tip)
        if done:
            log(f"already on the integration branch as {done[:12]}")
            return Integrated("integrated", done, on_integrated(done))
        if wsp.commit == wsp.base and not wsp.changed:
            return Integrated("integrated", tip, None)  # nothing to integrate (read-only work)
        if git.has_uncommitted(wsp.path):
            # Gates left files behind: keep them, but out of the way of the rebase.
            ref = rescue_ref(run_id, ws.id, "gate-leftovers")
            sha = git.snapshot_tree(wsp.path, f"agentrun: files left by the gates of {ws.id}")
            if sha:
                git.update_ref(gr.repo, ref, sha)
                log(f"gates left uncommitted changes; saved as {ref}, not integrated")
            git.run(wsp.path, "reset", "-q", "--hard")
            git.run(wsp.path, "clean", "-q", "-fd", *[f"--exclude=/{_ignore_escape(c)}" for c in wsp.copied])
        if not git.is_ancestor(wsp.path, tip, "HEAD"):
            if ws.merge == "rebase":
                proc = git.run(wsp.path, "rebase", "-q", "--no-verify", tip, check=False, env=git.IDENTITY)
                abort = ("rebase", "--abort")
            else:
                proc = git.run(wsp.path, "merge", "-q", "--no-ff", "--no-edit", "--no-verify", tip, check=False,
                               env=git.IDENTITY)
                abort = ("merge", "--abort")
            if proc.returncode != 0:
                files = git.unmerged_files(wsp.path)
                git.run(wsp.path, *abort, check=False)
                if not files:
                    return Integrated("failed", error=f"could not {ws.merge} onto the integration branch: "
                                                      f"{git.explain(proc)}")
                log(f"conflict integrating onto {tip[:12]}: {', '.join(files)}")
                return Integrated("conflict", conflict_files=files, error=f"conflict in {', '.join(files)}")
            if git.rev(wsp.path, "HEAD") == tip:
                log("the same change is already on the integration branch; nothing to merge")
                return Integrated("integrated", None, None)
            if ws.gate_after_merge and ws.gates:
                results = gates.run("after_merge", workdir, preexisting)
                bad = [n for n, r in results.items() if r.status != "ok" and n not in preexisting]
                if any(r.status == "cancelled" for r in results.values()):
                    return Integrated("cancelled", error="stopped: run interrupted")
                if bad:
                    return Integrated("failed", error=f"gate failed after merge: {bad[0]}")
        new = git.out(wsp.path, "rev-parse", "HEAD")
        crashpoints.hit("during-integration")
        git.update_ref(gr.repo, gr.integration_ref, new, tip)
        return Integrated("integrated", new, on_integrated(new))


def _ignore_escape(path: str) -> str:
    """``path`` as a .gitignore pattern that matches exactly it."""
    return re.sub(r"([*?\[\\])", r"\\\1", path)


def already_integrated(gr: GitRun, run_id: str, ws_id: str, tip: str) -> str | None:
    """The integration-branch commit carrying this workstream's trailer, if any (exactly-once)."""
    line = f"{TRAILER}: {run_id}/{ws_id}".replace(".", "\\.")
    text = git.out(gr.repo, "log", "--format=%H", f"--grep=^{line}$", f"{gr.base_commit}..{tip}")
    return text.splitlines()[0] if text else None


def commit_message(run_id: str, ws: Workstream, attempt: int) -> str:
    title = ws.title or ws.id
    return f"agentrun: {ws.id}: {title}\n\nRun {run_id}, attempt {attempt}.\n\n{TRAILER}: {run_id}/{ws.id}\n"


def fast_forward(repo: Path, branch: str, target: str) -> str:
    """Move ``branch`` to ``target`` only if that is a fast-forward; returns what happened."""
    old = git.rev(repo, f"refs/heads/{branch}")
    if old is None:
        raise git.GitError(f"--into: branch '{branch}' no longer exists")
    new = git.rev(repo, target)
    if old == new:
        return f"{branch} already at {new[:12]}"
    if not git.is_ancestor(repo, old, new):
        raise git.GitError(f"--into: cannot fast-forward '{branch}' to {target}: '{branch}' has moved since the "
                           f"run started; merge {target} yourself")
    if git.current_branch(repo) == branch:
        if git.dirty_files(repo):
            raise git.GitError(f"--into: '{branch}' is checked out with uncommitted changes; not touching it. "
                               f"Run `git merge --ff-only {target}` when it is clean")
        git.run(repo, "merge", "-q", "--ff-only", new)
    else:
        git.update_ref(repo, f"refs/heads/{branch}", new, old)
    return f"fast-forwarded {branch} {old[:12]}..{new[:12]}"
