"""The commands that read (and repair) what runs recorded: ``status``, ``logs`` and ``recover``."""

from __future__ import annotations

import json
import os
import sys

import click

from agentrun.run import recovery
from agentrun.store import redaction
from agentrun.views import status
from agentrun.cli.common import handle_errors, state_dir_option
from agentrun.views.output import silence
from agentrun.errors import EXIT_FAILED, UsageError
from agentrun.store.layout import layout_for, project_root
from agentrun.run.attempt import SPOOL_PREFIX, conversation_path, copy_log
from agentrun.spec.workstream import LLMSettings
from agentrun.store.state import StateStore


@click.command("status")
@click.argument("run_id", required=False)
@state_dir_option
@handle_errors
def status_cmd(run_id, state_dir) -> None:
    """Counts by state and a row per workstream for RUN_ID (default: the latest run)."""
    store = status.open_readonly(layout_for(state_dir, project_root()))
    try:
        click.echo(status.render_status(store, run_id))
    finally:
        store.close()


@click.command()
@click.argument("run_id")
@click.argument("ws_id")
@click.option("--attempt", type=int, default=None, help="Attempt number (default: the latest).")
@click.option("--conversation", is_flag=True, help="Show the LLM agent's conversation instead of the log.")
@state_dir_option
@handle_errors
def logs(run_id, ws_id, attempt, conversation, state_dir) -> None:
    """Print the log of workstream WS_ID in run RUN_ID."""
    layout = layout_for(state_dir, project_root())
    store = status.open_readonly(layout)
    try:
        path = status.log_path(store, run_id, ws_id, attempt)
        number = attempt or store.attempts(run_id, ws_id)[-1]["attempt"]
        llm = LLMSettings.from_json(json.loads(store.run(run_id)["options"]).get("llm", {}))
    finally:
        store.close()
    if conversation:
        conv = conversation_path(layout, run_id, ws_id, number)
        if not conv.is_file():
            raise UsageError(f"workstream '{ws_id}' attempt {number} has no conversation (not an agent workstream?)")
        from agentrun.views.models import render_conversation
        click.echo(render_conversation(conv))
        return
    if path is None:
        click.echo(f"workstream '{ws_id}' attempt {number} succeeded and printed nothing; no log was kept", err=True)
        return
    if not path.is_file():
        # A worker that died right after settling the log had not recorded where it went.
        kept = layout.log_path(run_id, ws_id, number)
        if not kept.is_file():
            raise UsageError(f"log file {path} is missing (removed by hand?)")
        path = kept
    # A kept log is redacted already; the output of an attempt still running (or of one whose
    # worker was killed) is not, until it is settled.
    secrets = redaction.run_secrets(redaction.secret_names(llm.models), os.environ)
    try:
        with open(path, "rb") as fh:
            fd, size = fh.fileno(), os.fstat(fh.fileno()).st_size
            if path.name.startswith(SPOOL_PREFIX):
                # A worker's spool, shown as it will be kept: what a kept log omits may be gone from
                # the disk already (see attempt.RunningLog), and reads as zeros.
                copy_log(fd, size, sys.stdout.buffer.write, secrets)
            else:
                secrets.copy(fd, 0, size, sys.stdout.buffer.write)
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other commands do
        silence(sys.stdout)
        sys.exit(EXIT_FAILED)
    except OSError as exc:  # a full disk, say
        silence(sys.stdout)
        click.echo(f"error: cannot write the log to the output: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_FAILED)


@click.command()
@click.argument("run_id", required=False)
@click.option("--list", "list_only", is_flag=True, help="List runs that did not finish; change nothing.")
@state_dir_option
@handle_errors
def recover(run_id, list_only, state_dir) -> None:
    """Reconcile a crashed run: stop its orphaned processes, mark their attempts lost, repair the log.

    Without RUN_ID, recovers every run whose orchestrator died.
    """
    layout = layout_for(state_dir, project_root())
    if list_only:
        store = status.open_readonly(layout)
        try:
            found = recovery.unfinished_runs(store)
        finally:
            store.close()
        if not found:
            click.echo("every recorded run finished; nothing to recover")
        for item in found:
            state = "crashed (orchestrator gone)" if item.crashed else "interrupted"
            counts = "  ".join(f"{s} {n}" for s, n in status.ordered_counts(item.counts))
            click.echo(f"{item.run['id']}  {state}  {counts}")
            click.echo(f"    {item.plan()}")
        return
    status.open_readonly(layout).close()  # refuses a missing or corrupt DB before anything writes
    store = StateStore(layout.db_path)
    try:
        if run_id:
            targets = [run_id]
        else:
            targets = [u.run["id"] for u in recovery.unfinished_runs(store) if u.crashed]
            if not targets:
                click.echo("no crashed runs; nothing to recover")
        for rid in targets:
            run_row = store.run(rid)
            if run_row is not None and run_row["status"] == "abandoned":
                click.echo(f"run {rid} was abandoned: nothing to recover")
                continue
            if run_row is not None and run_row["status"] in ("done", "failed") and not _left_to_run(store, rid):
                hint = (f" (to retry failed work, edit its files and run `agentrun resume {rid} --accept-changes`)"
                        if run_row["status"] == "failed" else "")
                click.echo(f"run {rid} finished {run_row['status']}: nothing to recover{hint}")
                continue
            report = recovery.recover(store, layout, rid)
            click.echo(f"run {rid}:")
            for action in report.actions or ["nothing needed fixing"]:
                click.echo(f"  {action}")
            if _left_to_run(store, rid):
                click.echo(f"  resume with: agentrun resume {rid}")
    finally:
        store.close()


def _left_to_run(store: StateStore, run_id: str) -> int:
    """Workstreams a resume would queue again."""
    counts = store.counts(run_id)
    return sum(counts.get(s, 0) for s in recovery.REQUEUE)
