"""``agentrun clean``: remove kept worktrees, per-workstream branches and scratch files."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from agentrun.git import repo as git
from agentrun.errors import UsageError
from agentrun.git.worktrees import integration_branch, rescue_and_remove, rescue_ref
from agentrun.store.state import orchestrator_alive
from agentrun.store.layout import Layout
from agentrun.store.state import StateStore


@dataclass
class CleanReport:
    worktrees: list[str] = field(default_factory=list)
    rescued: list[str] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)   # runs that can no longer be resumed
    freed_bytes: int = 0


def disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def clean(store: StateStore, layout: Layout, root: Path, run_id: str | None, everything: bool) -> CleanReport:
    if run_id:
        run = store.run(run_id)
        if run is None:
            raise UsageError(f"unknown run id '{run_id}'")
        runs = [run]
    else:
        runs = store.runs(limit=1_000_000)
    report = CleanReport()
    is_repo = git.is_repo(root)
    for run in runs:
        if run["status"] == "running":
            if run_id:
                why = ("is still running" if orchestrator_alive(run)
                       else "crashed and is not recovered (its processes may still use the worktrees); "
                            f"run `agentrun recover {run['id']}` first")
                raise UsageError(f"run {run['id']} {why}")
            continue
        trees = layout.worktrees_dir(run["id"])
        if trees.is_dir():
            report.freed_bytes += disk_usage(trees)
            for path in sorted(p for p in trees.iterdir() if p.is_dir()):
                ref = rescue_ref(run["id"], path.name, "clean")
                saved = rescue_and_remove(root, path, ref) if is_repo else shutil.rmtree(path)
                report.worktrees.append(str(path))
                if saved:
                    report.rescued.append(f"{path.name}: uncommitted changes saved as {ref} ({saved[:12]})")
            try:
                trees.rmdir()  # only if empty: a worktree moved aside as *.broken-* stays
            except OSError:
                pass
        tmp = layout.run_dir(run["id"]) / "tmp"
        if tmp.is_dir():
            report.freed_bytes += disk_usage(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        if is_repo:
            integration = integration_branch(run["id"])
            tip = git.rev(root, integration)   # before any branch goes: it may be the first deleted
            if everything and run["status"] not in ("done", "abandoned") and tip:
                # resume continues on the integration branch: without it the run is over for good
                with store.write() as db:
                    db.execute("UPDATE runs SET status = 'abandoned' WHERE id = ?", (run["id"],))
                report.abandoned.append(run["id"])
            for branch in git.branches(root, f"agentrun/{run['id']}/"):
                if branch == integration and not everything:
                    continue
                if branch != integration and not (tip and git.is_ancestor(root, branch, tip)):
                    # A result that never reached the integration branch (failed gate,
                    # conflict): keep it reachable.
                    ref = rescue_ref(run["id"], branch.rsplit("/", 1)[1], "result")
                    git.update_ref(root, ref, git.rev(root, branch))
                    report.rescued.append(f"{branch}: unmerged result kept as {ref}")
                git.delete_branch(root, branch)
                report.branches.append(branch)
        with store.write() as db:
            db.execute("UPDATE workstreams SET worktree = NULL WHERE run_id = ?", (run["id"],))
    return report
