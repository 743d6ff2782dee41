"""The commands that run workstreams: ``plan`` (what a run would do), ``run`` and ``resume``, and
the end-of-run summary they share."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from agentrun.views import plan as render
from agentrun.run import orchestrator as runner
from agentrun.views import status
from agentrun.cli.common import Bounded, handle_errors, state_dir_option
from agentrun.spec.durations import format_duration
from agentrun.errors import EXIT_FAILED, GitError, UsageError
from agentrun.git.merge import fast_forward
from agentrun.store.layout import layout_for, project_root
from agentrun.views.progress import display_for
from agentrun.plan.scheduler import SCHEDULES
from agentrun.spec.fields import BUDGET_MODES, MAX_COST_USD

MAX_WORKERS = 1024


def _workers(parallel: bool, max_workers: int | None) -> int:
    """-j N alone means N workers; --parallel alone, one per CPU; neither, one at a time."""
    if max_workers is not None:
        return max_workers
    return (os.cpu_count() or 2) if parallel else 1


def _fit_workers(prep: runner.Prepared) -> runner.Prepared:
    """Never more workers than workstreams: the run records (and reports count) the workers it can use."""
    prep.options.max_workers = min(prep.options.max_workers, len(prep.plan.workstreams))
    return prep


@click.command()
@click.argument("source", default="waves", required=False)
@click.option("--max-workers", "-j", type=Bounded(int, 1, MAX_WORKERS), default=None, metavar="N",
              help="Workers the plan is sized for (default: CPUs).")
@click.option("--format", "fmt", type=click.Choice(render.FORMATS), default="text", show_default=True)
@click.option("--ws-id", "ws_ids", multiple=True, help="Plan only these workstreams (repeatable).")
@click.option("--with-deps", is_flag=True, help="With --ws-id: include what they depend on.")
@state_dir_option
@handle_errors
def plan(source, max_workers, fmt, ws_ids, with_deps, state_dir) -> None:
    """Print waves, critical path, estimated makespan and bounds for SOURCE (default: waves/)."""
    opts = runner.RunOptions(source=source, max_workers=_workers(True, max_workers), ws_ids=ws_ids,
                             with_deps=with_deps, state_dir=state_dir)
    prep = _fit_workers(runner.prepare(opts))
    click.echo(render.render_plan(prep.plan, opts.max_workers, fmt, title=source, llm=prep.source.llm,
                                  root=prep.root))


@click.command()
@click.argument("source", default="waves", required=False)
@click.option("--parallel", is_flag=True, help="Run workstreams in parallel, one worker per CPU "
              "(default: one at a time).")
@click.option("--max-workers", "-j", type=Bounded(int, 1, MAX_WORKERS), default=None, metavar="N",
              help="Run up to N workstreams in parallel (with or without --parallel).")
@click.option("--ws-id", "ws_ids", multiple=True, help="Run only these workstreams (repeatable).")
@click.option("--with-deps", is_flag=True, help="With --ws-id: also run what they depend on.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="eager", show_default=True,
              help="eager: start work as soon as its dependencies are done; waves: barrier after each wave.")
@click.option("--fail-fast", is_flag=True, help="Stop everything at the first final failure.")
@click.option("--dry-run", is_flag=True, help="Print the plan and run nothing.")
@click.option("--into", metavar="BRANCH", help="At the end, fast-forward BRANCH to the integration branch "
              "if every workstream is done.")
@click.option("--budget", "budget_usd", type=Bounded(float, 0, MAX_COST_USD), default=None, metavar="USD",
              help="Run budget in US dollars for model calls (overrides [budget] max_cost_usd).")
@click.option("--budget-mode", type=click.Choice(BUDGET_MODES), default=None,
              help="warn: log and go on; soft: start nothing new; hard: stop running work now.")
@click.option("--resume", "resume_id", metavar="RUN_ID", help="Continue RUN_ID instead (same as `agentrun resume`).")
@click.option("--accept-changes", is_flag=True, help="With --resume: use edited workstream files.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output, only the final summary.")
@state_dir_option
@handle_errors
def run(source, parallel, max_workers, ws_ids, with_deps, schedule, fail_fast, dry_run, into, budget_usd,
        budget_mode, resume_id, accept_changes, quiet, state_dir) -> None:
    """Run the workstreams in SOURCE (default: waves/)."""
    if resume_id:
        clashing = [name for name, value in (("--dry-run", dry_run), ("--ws-id", ws_ids), ("--with-deps", with_deps),
                                             ("--into", into), ("--budget", budget_usd), ("--budget-mode", budget_mode),
                                             ("--fail-fast", fail_fast)) if value]
        if clashing:
            raise UsageError(f"--resume continues a run with its recorded options; {', '.join(clashing)} "
                             "cannot be combined with it")
        sys.exit(_resume(resume_id, accept_changes, max_workers, quiet, state_dir))
    opts = runner.RunOptions(source=source, max_workers=_workers(parallel, max_workers), schedule=schedule,
                             fail_fast=fail_fast, ws_ids=ws_ids, with_deps=with_deps, state_dir=state_dir,
                             into=into, budget_usd=budget_usd, budget_mode=budget_mode)
    prep = _fit_workers(runner.prepare(opts))
    if dry_run:
        click.echo(render.render_plan(prep.plan, opts.max_workers, "text", title=source,
                                      llm=prep.source.llm, root=prep.root))
        click.echo("dry run: nothing was run or written")
        return
    runner.preflight(prep.source.llm, prep.plan)
    for note in prep.notes:
        click.echo(f"note: {note}", err=True)
    runner.hold_stop_signals()
    try:
        store, run_id = runner.create_run(prep)
        code = _execute(store, prep.layout, run_id, prep.plan, prep.root, opts, quiet)
    finally:
        runner.release_stop_signals()
    sys.exit(code)


def _execute(store, layout, run_id, plan, root, opts, quiet, resumed=False) -> int:
    """Run the orchestrator with a display; print the summary; returns the exit code."""
    display = display_for(sys.stdout, layout.events_path(run_id), quiet)
    orch = runner.Orchestrator(store, layout, run_id, plan, root, opts, display=display, resumed=resumed)
    result = orch.run()
    orch.store.close()
    return _summary(result, layout, root, opts, resumed)


def _summary(result: runner.RunResult, layout, root, opts, resumed: bool = False) -> int:
    """Print the end-of-run summary of the whole run; returns the exit code. ``result.elapsed`` is
    the time this process ran it, which after a resume is only the last part."""
    code = result.exit_code
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
    store = status.open_readonly(layout)
    try:
        run_row = store.run(result.run_id)
        took = f"in {format_duration(result.elapsed)}"
        if resumed:
            since = format_duration((run_row["finished_at"] or time.time()) - run_row["created_at"])
            took = f"{since} after it started" + (f" (this resume took {format_duration(result.elapsed)})"
                                                   if result.elapsed else "")
        click.echo(f"\nrun {result.run_id} {result.status} {took}: {counts}")
        rows = store.workstreams(result.run_id, "ws_id, status, error, worktree, integrated_commit")
        for r in rows:
            if r["status"] in ("failed", "conflict"):
                attempts = store.attempts(result.run_id, r["ws_id"])
                where = attempts[-1]["log_path"] if attempts else "-"
                click.echo(f"  {r['status']}: {r['ws_id']}: {r['error'] or ''}  log: {where}")
        kept = [r for r in rows if r["worktree"] and Path(r["worktree"]).exists()]
        if kept:
            click.echo("worktrees kept for inspection (remove with `agentrun clean`):")
            for r in kept:
                click.echo(f"  {r['ws_id']}: {r['worktree']}")
    finally:
        store.close()
    if run_row["fatal_error"]:
        click.echo(f"error: the run was stopped early: {run_row['fatal_error']}", err=True)
    if run_row["integration_branch"]:
        merged = sum(1 for r in rows if r["integrated_commit"])
        click.echo(f"integration branch: {run_row['integration_branch']} ({merged} results merged)")
        if opts.into:
            if result.status == "done":
                try:
                    click.echo(fast_forward(root, opts.into, run_row["integration_branch"]))
                except GitError as exc:
                    click.echo(f"error: {exc}", err=True)
                    code = EXIT_FAILED
            else:
                click.echo(f"not updating {opts.into}: the run is {result.status}; the integration "
                           "branch holds the verified results")
    click.echo(f"details: agentrun status {result.run_id}    logs: agentrun logs {result.run_id} WS_ID")
    return code


@click.command()
@click.argument("run_id")
@click.option("--accept-changes", is_flag=True, help="Use edited workstream files for work not yet done.")
@click.option("--max-workers", "-j", type=Bounded(int, 1, MAX_WORKERS), default=None, metavar="N",
              help="Workers (default: as the run was started).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output, only the final summary.")
@state_dir_option
@handle_errors
def resume(run_id, accept_changes, max_workers, quiet, state_dir) -> None:
    """Continue RUN_ID: done work stays done; lost, interrupted and pending work runs again."""
    sys.exit(_resume(run_id, accept_changes, max_workers, quiet, state_dir))


def _resume(run_id, accept_changes, max_workers, quiet, state_dir) -> int:
    runner.hold_stop_signals()
    try:
        return _resume_held(run_id, accept_changes, max_workers, quiet, state_dir)
    finally:
        runner.release_stop_signals()


def _resume_held(run_id, accept_changes, max_workers, quiet, state_dir) -> int:
    root = project_root()
    layout = layout_for(state_dir, root)
    res = runner.prepare_resume(layout, run_id, accept_changes=accept_changes, max_workers=max_workers)
    for action in res.recovered:
        click.echo(f"recovered: {action}", err=True)
    for note in res.notes:
        click.echo(f"note: {note}", err=True)
    if res.plan is None:
        changed = res.run["status"] != res.final_status
        counts = res.store.counts(run_id)
        res.store.close()
        if changed:  # finished now: report it like the end of a run (and honour --into)
            return _summary(runner.RunResult(run_id, res.final_status, counts, 0.0,
                                             0 if res.final_status == "done" else EXIT_FAILED),
                            layout, Path(res.run["project_root"]), res.options, resumed=True)
        return 0 if res.final_status == "done" else EXIT_FAILED
    return _execute(res.store, layout, run_id, res.plan, Path(res.run["project_root"]), res.options, quiet,
                    resumed=True)
