"""Isolation and integration: a worktree per attempt, verification, the merge queue.

Everything here runs inside a worker, for one attempt. The merge queue is a
file lock per run: results are integrated one at a time, in the order their
workers reach the lock, and the integration branch only ever moves by a
compare-and-swap of its ref.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path


from agentrun.store import crashpoints
from agentrun.git import repo as git
from agentrun.spec import globs
from agentrun.spec.globs import in_scope
from agentrun.proc.command import AttemptContext, ExecResult, run_command
from agentrun.spec.workstream import Workstream

TRAILER = "Agentrun-Workstream"


@dataclass(frozen=True)
class GitRun:
    """Per-run git settings, fixed when the run is created."""

    repo: Path
    base_commit: str
    integration_branch: str
    lock_path: Path

    @property
    def integration_ref(self) -> str:
        return f"refs/heads/{self.integration_branch}"


def integration_branch(run_id: str) -> str:
    return f"agentrun/{run_id}/integration"


def ws_branch(run_id: str, ws_id: str) -> str:
    """A workstream's branch, in a namespace of its own: no id can name the integration branch."""
    return f"agentrun/{run_id}/ws/{ws_id}"


def rescue_ref(run_id: str, ws_id: str, attempt: int | str) -> str:
    return f"refs/agentrun/rescue/{run_id}/{ws_id}/{attempt}"


@dataclass
class Workspace:
    path: Path
    isolated: bool
    branch: str | None = None
    base: str | None = None
    commit: str | None = None
    changed: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)     # untracked config copied in: never part of the result


def integration_tip(gr: GitRun) -> str:
    tip = git.rev(gr.repo, gr.integration_ref)
    if tip is None:
        raise git.GitError(f"the run's integration branch {gr.integration_branch} is gone (deleted?); "
                           "nothing more can be integrated in this run")
    return tip


def rescue_and_remove(repo: Path, path: Path, ref: str) -> str | None:
    """Remove a worktree; if it holds uncommitted work, first save it under ``ref``. Returns the rescue sha."""
    sha = None
    if path.exists():
        try:
            sha = git.snapshot_tree(path, f"agentrun rescue of {path}")
        except git.GitError:
            # Not snapshottable (a half-made worktree, a process killed mid-rebase):
            # never delete what we cannot save; move it aside instead.
            aside = path.with_name(f"{path.name}.broken-{int(time.time())}")
            path.rename(aside)
            git.worktree_prune(repo)
            return None
        if sha:
            git.update_ref(repo, ref, sha)
    git.worktree_remove(repo, path)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    return sha


def prepare_workspace(gr: GitRun, worktrees_dir: Path, run_id: str, ws: Workstream, attempt: int,
                      log, state_dir: Path) -> Workspace:
    """A fresh worktree at the integration tip, on the workstream's branch."""
    path = worktrees_dir / ws.id
    if path.exists():
        saved = rescue_and_remove(gr.repo, path, rescue_ref(run_id, ws.id, f"{attempt - 1}-left"))
        if saved:
            log(f"previous worktree had uncommitted changes; saved as {rescue_ref(run_id, ws.id, f'{attempt - 1}-left')}")
    base = integration_tip(gr)
    branch = ws_branch(run_id, ws.id)
    git.worktree_add(gr.repo, path, branch, base)
    copied = copy_untracked(gr.repo, path, ws.copy_untracked, state_dir, log) if ws.copy_untracked else []
    return Workspace(path, True, branch, base, copied=copied)


def copy_untracked(repo: Path, worktree: Path, patterns: tuple[str, ...], state_dir: Path, log) -> list[str]:
    """Copy the project's untracked files (ignored ones included) that ``patterns`` match into the
    worktree, and record them there so that no commit, rescue or ref ever contains them. Raises
    ValueError for a file that would be read or written outside the project or the worktree."""
    prefixes = {globs.parse(p).prefix for p in patterns}
    pathspecs = [] if "" in prefixes else [f":(literal){p}" for p in sorted(prefixes)]
    try:
        pathspecs.append(f":(exclude,literal){state_dir.resolve().relative_to(repo.resolve())}")
    except ValueError:
        pass  # the state directory is outside the project
    # --others without --exclude-standard: ignored files too (a .env is usually ignored)
    listed = git.run(repo, "ls-files", "--others", "-z", "--", *(pathspecs or ["."])).stdout.split("\0")
    real_repo, real_tree = repo.resolve(), worktree.resolve()
    copied: list[str] = []
    for rel in globs.matcher(patterns).select(sorted(p for p in listed if p and not p.endswith("/"))):
        source = (repo / rel).resolve()
        if not source.is_relative_to(real_repo) or ".git" in source.relative_to(real_repo).parts:
            raise ValueError(f"copy_untracked: {rel!r} leads outside the project through a symlink (to {source})")
        dest = worktree / rel
        if os.path.lexists(dest):
            log(f"not copied: {rel} is in the worktree already (tracked at the base)")
            continue
        parent = dest.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.resolve().is_relative_to(real_tree):
            raise ValueError(f"copy_untracked: {rel!r} would be written outside the worktree through a symlink "
                             f"(to {parent.resolve()})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
        copied.append(rel)
        log(f"copied untracked {rel} (never committed)")
    git.mark_copied(worktree, copied)
    return copied


def leaving_path(root: Path, ws: Workstream) -> str | None:
    """What is wrong with the first of the workstream's paths (``cwd``, and the part of each
    ``files`` entry before its first wildcard) that leads outside ``root`` or into its ``.git``
    through a symlink, or None. agentrun runs commands in ``cwd``, and the agent reads and writes
    ``files``: none of them may leave the worktree. Checked on the deepest part that exists."""
    entries = [("cwd", ws.cwd)] if ws.cwd else []
    entries += [("files", globs.parse(p).prefix) for p in ws.files]
    real_root = root.resolve() if entries else root
    for name, rel in entries:
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        while parts and not os.path.lexists(root.joinpath(*parts)):
            parts.pop()
        if not parts:
            continue
        try:
            target = root.joinpath(*parts).resolve()
        except (OSError, RuntimeError):   # a symlink loop
            return f"{name}: {'/'.join(parts)!r} cannot be resolved (a symlink loop); agentrun does not work there"
        inside = target == real_root or target.is_relative_to(real_root)
        if not inside or ".git" in target.relative_to(real_root).parts:
            where = "outside the worktree" if not inside else "into .git"
            return (f"{name}: {'/'.join(parts)!r} leads {where} through a symlink (to {target}); "
                    "agentrun does not work there")
    return None


@dataclass
class GateRunner:
    """Runs a workstream's gates and records each result (DB and event log)."""

    ws: Workstream
    attempt: int
    actx: AttemptContext
    record: object          # callable(phase, gate, status, exit_code, started, finished)
    log: object             # callable(str)

    def run(self, phase: str, workdir: Path, excused: set[str] = frozenset()) -> dict[str, ExecResult]:
        """Run every gate; a failure of a gate in ``excused`` (or any failure in the baseline
        phase) is recorded as ``pre-existing``."""
        results: dict[str, ExecResult] = {}
        for gate in self.ws.gates:
            name = gate.display()
            self.log(f"gate ({phase}): {name}")
            started = time.time()
            result = run_command(gate, replace(self.actx, workdir=str(workdir)), timeout=self.ws.timeout)
            results[name] = result
            status = "passed" if result.status == "ok" else result.status
            if status in ("failed", "timeout") and (phase == "baseline" or name in excused):
                status = "pre-existing"
            self.record(phase, name, status, result.exit_code, started, time.time())
            self.log(f"gate ({phase}) {status}: {name}")
            if result.status == "cancelled":
                break
        return results


def verify(ws: Workstream, wsp: Workspace, gates: GateRunner, workdir: Path, message: str,
           preexisting: set[str]) -> ExecResult | None:
    """Commit the attempt's work and check it. None when verified, else the failure."""
    if wsp.isolated:
        wsp.commit = git.commit_all(wsp.path, message) or wsp.base
        wsp.changed = git.changed_files(wsp.path, wsp.base, wsp.commit) if wsp.commit != wsp.base else []
        leaked = sorted(set(wsp.changed) & set(wsp.copied))
        if leaked:   # the command committed them itself: no ref may keep that commit
            git.update_ref(wsp.path, f"refs/heads/{wsp.branch}", wsp.base)
            return ExecResult("failed", error=f"copy_untracked: the result contains the copied file(s) "
                                              f"{', '.join(leaked)}; copied files are never part of a result")
        if ws.changes_expected and not wsp.changed:
            return ExecResult("failed", error="no changes: the command exited 0 but changed no file "
                                              "(set expect_changes = false for read-only work)")
        outside = [f for f in wsp.changed if ws.files and not in_scope(f, ws.files)]
        if outside and ws.scope != "off":
            note = f"changed files outside `files`: {', '.join(outside[:10])}"
            if ws.scope == "fail":
                return ExecResult("failed", error=f"scope: {note}")
            gates.log(f"warning: scope: {note}")
    results = gates.run("verify", workdir, preexisting)
    for name, result in results.items():
        if result.status == "cancelled":
            return result
        if result.status != "ok" and name not in preexisting:
            return ExecResult("failed", result.exit_code, result.signal, f"gate failed: {name} ({result.error})")
    return None


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


def free_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



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
