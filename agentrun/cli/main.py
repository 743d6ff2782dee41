"""The command line: parse options, call the core, map typed errors to exit codes."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

import click

from agentrun.run import recovery
from agentrun.store import redaction
from agentrun.views import plan as render
from agentrun.run import orchestrator as runner
from agentrun.views import status
from agentrun.cli.common import handle_errors, state_dir_option
from agentrun.views.output import ForgivingOutput, silence
from agentrun.spec.durations import format_duration
from agentrun.errors import EXIT_FAILED, EXIT_USAGE, GitError, UsageError
from agentrun.git.integration import fast_forward
from agentrun.store.layout import layout_for, project_root
from agentrun.views.progress import display_for
from agentrun.run.attempt import SPOOL_PREFIX, conversation_path, copy_log
from agentrun.plan.scheduler import SCHEDULES
from agentrun.spec.fields import BUDGET_MODES, MAX_COST_USD
from agentrun.spec.workstream import LLMSettings
from agentrun.store.state import StateStore
from agentrun.spec.values import number, shown, whole_number

MAX_WORKERS = 1024


class BadOptionValue(click.ClickException):
    """A bad option value, reported like any bad input: one line naming the option and the fix, exit
    code 2 (click's own usage errors print the usage too)."""

    exit_code = EXIT_USAGE

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Bounded(click.ParamType):
    """A number from ``low`` to ``high``, checked as the numbers of workstream files are (click's
    FloatRange lets NaN through)."""

    def __init__(self, kind: type, low: int, high: int):
        self.kind, self.low, self.high = kind, low, high
        self.name = "whole number" if kind is int else "number"

    def convert(self, value, param, ctx):
        try:
            return (whole_number if self.kind is int else number)(self.kind(value), self.low, self.high)
        except ValueError:
            raise BadOptionValue(f"{param.opts[0]}: {shown(str(value))} is not a {self.name} from {self.low:,} "
                                 f"to {self.high:,}") from None


class LazyGroup(click.Group):
    """Loads the modules of ``report`` and ``monitor`` only when one of them is used: every
    ``run`` would otherwise import the HTML report, the web server and the terminal panel."""

    LAZY = {"monitor": "agentrun.cli.monitor", "report": "agentrun.cli.report"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY:
            return getattr(importlib.import_module(self.LAZY[name]), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentrun")
def cli() -> None:
    """Run many units of development work in parallel under a dependency graph."""


def _workers(parallel: bool, max_workers: int | None) -> int:
    """-j N alone means N workers; --parallel alone, one per CPU; neither, one at a time."""
    if max_workers is not None:
        return max_workers
    return (os.cpu_count() or 2) if parallel else 1


def _fit_workers(prep: runner.Prepared) -> runner.Prepared:
    """Never more workers than workstreams: the run records (and reports count) the workers it can use."""
    prep.options.max_workers = min(prep.options.max_workers, len(prep.plan.workstreams))
    return prep


@cli.command()
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


@cli.command()
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


@cli.command()
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


@cli.command()
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


@cli.command()
@click.argument("source", default="waves", required=False)
@state_dir_option
@handle_errors
def models(source, state_dir) -> None:
    """List model presets and entries, and the model each agent workstream in SOURCE would get."""
    from agentrun.views.models import model_table
    settings, rows = model_table(source)
    click.echo(f"{'name':<16} {'provider id':<44} {'window':>9} {'edits':<6} {'$/Mtok in':>9} {'$/Mtok out':>10}  key")
    for m in settings:
        price = lambda v: "unknown" if v is None else f"{v:.2f}"
        click.echo(f"{m.name:<16} {m.id:<44} {m.context_window:>9} {m.edit_format:<6} "
                   f"{price(m.input_cost_per_mtok):>9} {price(m.output_cost_per_mtok):>10}  {m.api_key_env or '-'}")
    if rows:
        click.echo("")
        click.echo(f"{'workstream':<32} {'model':<16} {'why':<22} fallbacks")
        for ws_id, name, why, fallbacks in rows:
            click.echo(f"{ws_id:<32} {name:<16} {why:<22} {', '.join(fallbacks) or '-'}")


@cli.command()
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


def main() -> None:
    sys.stdout = ForgivingOutput(sys.stdout)
    sys.stderr = ForgivingOutput(sys.stderr)
    cli(standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main()
