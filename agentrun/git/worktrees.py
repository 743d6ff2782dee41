"""Per-attempt worktrees: the run's git settings, the branch and ref names, and a fresh
worktree per attempt (untracked config copied in, leftovers rescued before removal), plus
the check that a workstream's paths stay inside it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from agentrun.git import repo as git
from agentrun.spec import globs
from agentrun.spec.workstream import Workstream


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
