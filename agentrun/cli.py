"""The command line: parse options, call the core, map typed errors to exit codes."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from . import render, runner, status
from .durations import format_duration
from .errors import EXIT_USAGE, AgentrunError
from .layout import layout_for, project_root
from .progress import display_for
from .scheduler import SCHEDULES

state_dir_option = click.option("--state-dir", type=click.Path(file_okay=False),
                                help="State directory (default: .agentrun/ in the project root).")


def handle_errors(fn):
    """Turn AgentrunError into a one-line-per-problem message and its exit code."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AgentrunError as exc:
            for line in exc.lines():
                click.echo(f"error: {line}", err=True)
            sys.exit(exc.exit_code)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentrun")
def cli() -> None:
    """Run many units of development work in parallel under a dependency graph."""


def _workers(parallel: bool, max_workers: int | None) -> int:
    if max_workers is not None:
        return max_workers if parallel else 1
    return (os.cpu_count() or 2) if parallel else 1


@cli.command()
@click.argument("source", default="waves", required=False)
@click.option("--max-workers", type=int, default=None, help="Workers the plan is sized for (default: CPUs).")
@click.option("--format", "fmt", type=click.Choice(render.FORMATS), default="text", show_default=True)
@click.option("--ws-id", "ws_ids", multiple=True, help="Plan only these workstreams (repeatable).")
@click.option("--with-deps", is_flag=True, help="With --ws-id: include what they depend on.")
@state_dir_option
@handle_errors
def plan(source, max_workers, fmt, ws_ids, with_deps, state_dir) -> None:
    """Print waves, critical path, estimated makespan and bounds for SOURCE (default: waves/)."""
    opts = runner.RunOptions(source=source, max_workers=_workers(True, max_workers), ws_ids=ws_ids,
                             with_deps=with_deps, state_dir=state_dir)
    prep = runner.prepare(opts)
    click.echo(render.render_plan(prep.plan, opts.max_workers, fmt, title=source))


@cli.command()
@click.argument("source", default="waves", required=False)
@click.option("--parallel", is_flag=True, help="Run workstreams in parallel (default: one at a time).")
@click.option("--max-workers", type=int, default=None, help="Workers with --parallel (default: CPUs).")
@click.option("--ws-id", "ws_ids", multiple=True, help="Run only these workstreams (repeatable).")
@click.option("--with-deps", is_flag=True, help="With --ws-id: also run what they depend on.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="eager", show_default=True,
              help="eager: start work as soon as its dependencies are done; waves: barrier after each wave.")
@click.option("--fail-fast", is_flag=True, help="Stop everything at the first final failure.")
@click.option("--dry-run", is_flag=True, help="Print the plan and run nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output, only the final summary.")
@state_dir_option
@handle_errors
def run(source, parallel, max_workers, ws_ids, with_deps, schedule, fail_fast, dry_run, quiet, state_dir) -> None:
    """Run the workstreams in SOURCE (default: waves/)."""
    opts = runner.RunOptions(source=source, max_workers=_workers(parallel, max_workers), schedule=schedule,
                             fail_fast=fail_fast, ws_ids=ws_ids, with_deps=with_deps, state_dir=state_dir)
    prep = runner.prepare(opts)
    if dry_run:
        click.echo(render.render_plan(prep.plan, opts.max_workers, "text", title=source))
        click.echo("dry run: nothing was run or written")
        return
    store, run_id = runner.create_run(prep)
    display = display_for(sys.stdout, prep.layout.events_path(run_id), quiet)
    orch = runner.Orchestrator(store, prep.layout, run_id, prep.plan, prep.root, opts, display=display)
    result = orch.run()
    orch.store.close()
    _summary(result, prep)
    sys.exit(result.exit_code)


def _summary(result: runner.RunResult, prep: runner.Prepared) -> None:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
    click.echo(f"\nrun {result.run_id} {result.status} in {format_duration(result.elapsed)}: {counts}")
    store = status.open_readonly(prep.layout)
    try:
        failed = [r for r in store.workstreams(result.run_id) if r["status"] in ("failed", "conflict")]
        for r in failed:
            attempts = store.attempts(result.run_id, r["ws_id"])
            where = attempts[-1]["log_path"] if attempts else "-"
            click.echo(f"  {r['status']}: {r['ws_id']}: {r['error'] or ''}  log: {where}")
    finally:
        store.close()
    click.echo(f"details: agentrun status {result.run_id}    logs: agentrun logs {result.run_id} WS_ID")


@cli.command("status")
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


@cli.command()
@click.argument("run_id")
@click.argument("ws_id")
@click.option("--attempt", type=int, default=None, help="Attempt number (default: the latest).")
@state_dir_option
@handle_errors
def logs(run_id, ws_id, attempt, state_dir) -> None:
    """Print the log of workstream WS_ID in run RUN_ID."""
    store = status.open_readonly(layout_for(state_dir, project_root()))
    try:
        path = status.log_path(store, run_id, ws_id, attempt)
    finally:
        store.close()
    if not Path(path).is_file():
        raise click.ClickException(f"log file {path} is missing")
    with open(path, "rb") as fh:
        sys.stdout.buffer.write(fh.read())


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
