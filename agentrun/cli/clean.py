"""The ``clean`` command: remove what runs left behind (worktrees, branches, scratch files)."""

from __future__ import annotations

import click

from agentrun.cli.common import handle_errors, state_dir_option
from agentrun.errors import UsageError
from agentrun.store.layout import layout_for, project_root
from agentrun.store.state import StateStore


@click.command()
@click.option("--run-id", help="Clean only this run (default: every run that is not running).")
@click.option("--all", "everything", is_flag=True, help="Also delete integration branches (a run that could "
              "still be resumed is abandoned).")
@state_dir_option
@handle_errors
def clean(run_id, everything, state_dir) -> None:
    """Remove kept worktrees, per-workstream branches and scratch files.

    Uncommitted changes in a worktree are saved to refs/agentrun/rescue/... first.
    """
    root = project_root()
    layout = layout_for(state_dir, root)
    if not layout.db_path.is_file():
        raise UsageError(f"{layout.db_path}: no state DB here; nothing to clean")
    from agentrun.run import cleanup  # only this command needs it
    store = StateStore(layout.db_path)
    try:
        report = cleanup.clean(store, layout, root, run_id, everything)
    finally:
        store.close()
    for line in report.rescued:
        click.echo(f"rescued {line}")
    for rid in report.abandoned:
        click.echo(f"abandoned run {rid}: its integration branch is gone, so it can no longer be resumed")
    click.echo(f"removed {len(report.worktrees)} worktree(s), {len(report.branches)} branch(es); "
               f"freed {report.freed_bytes / 1e6:.1f} MB")
