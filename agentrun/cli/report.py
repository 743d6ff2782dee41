"""``agentrun report``: show, export, compare and HTML reports of runs.

Thin commands over ``report_data``, ``report``, ``report_compare`` and
``report_html``. The state DB is opened read-only: a report never changes a run. Registered in ``cli`` with
``cli.add_command(report)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from agentrun.views import report_models
from agentrun.cli.common import handle_errors, state_dir_option
from agentrun.errors import UsageError
from agentrun.store.layout import layout_for, project_root
from agentrun.views.report import render_text, to_csv, to_json
from agentrun.views.report_compare import compare_reports, render_compare
from agentrun.views.report_data import load_report
from agentrun.views.report_html import render_html
from agentrun.views.status import open_readonly



def _store(state_dir: str | None):
    return open_readonly(layout_for(state_dir, project_root()))


def _reports(state_dir: str | None, *run_ids: str | None) -> list[dict]:
    store = _store(state_dir)
    try:
        return [load_report(store, run_id) for run_id in run_ids]
    finally:
        store.close()


def _write(text: str, output: str | None, state_dir: str | None) -> None:
    """To stdout, or to ``output`` atomically (a reader never sees half a file)."""
    if output is None or output == "-":
        click.echo(text, nl=not text.endswith("\n"))
        return
    path = Path(output)
    db = layout_for(state_dir, project_root()).db_path
    if path.resolve() == db.resolve():
        raise UsageError(f"-o: {output} is the state DB; choose another file")
    if path.is_dir():
        raise UsageError(f"-o: {output} is a directory; give a file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as exc:
        raise UsageError(f"-o: cannot write {output}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UsageError(f"-o: cannot write {output}: {exc.strerror or exc}") from None


@click.group("report", context_settings={"help_option_names": ["-h", "--help"]})
def report() -> None:
    """What happened in a run: timings, critical path, failures, exports.

    Reads the state DB without changing it; works on finished and running runs.
    """


@report.command("show", short_help="Summary of a run (default: the latest).")
@click.argument("run_id", required=False)
@state_dir_option
@handle_errors
def show(run_id, state_dir) -> None:
    """Summary of RUN_ID (default: the latest run): wall time, work, efficiency, the actual
    critical path, a row per workstream, failures with the end of their logs, conflicts, gates."""
    (rep,) = _reports(state_dir, run_id)
    click.echo(render_text(rep))


@report.command("export", short_help="A run as JSON or CSV.")
@click.argument("run_id")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True)
@click.option("-o", "--output", metavar="FILE", help="Write to FILE (default: standard output).")
@state_dir_option
@handle_errors
def export(run_id, fmt, output, state_dir) -> None:
    """RUN_ID as JSON (schema agentrun.report/1: run, workstreams, attempts, gates) or CSV (a row per
    workstream). The fields are documented in the README."""
    (rep,) = _reports(state_dir, run_id)
    _write(to_json(rep) if fmt == "json" else to_csv(rep), output, state_dir)


@report.command("compare", short_help="Differences between two runs.")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@state_dir_option
@handle_errors
def compare(run_a, run_b, fmt, state_dir) -> None:
    """Differences from RUN_A to RUN_B: totals and per workstream duration, status, attempts, cost."""
    a, b = _reports(state_dir, run_a, run_b)
    cmp = compare_reports(a, b)
    click.echo(json.dumps(cmp, indent=2) if fmt == "json" else render_compare(cmp))


@report.command("html", short_help="A run as one self-contained HTML page.")
@click.argument("run_id")
@click.option("-o", "--output", metavar="FILE", required=True, help="The HTML file to write.")
@state_dir_option
@handle_errors
def html(run_id, output, state_dir) -> None:
    """RUN_ID as one self-contained HTML page: timeline, dependency graph, tables."""
    (rep,) = _reports(state_dir, run_id)
    _write(render_html(rep), output, state_dir)
    if output != "-":
        click.echo(f"wrote {output}", err=True)


@report.command("models", short_help="Per model and per workstream type: calls, latency, cost, errors.")
@click.argument("run_id", required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@state_dir_option
@handle_errors
def models(run_id, fmt, state_dir) -> None:
    """How each model fared in RUN_ID (default: the latest run): calls, success rate (ok / calls sent,
    cache hits and budget refusals left out), p50/p95 latency of ok calls, tokens, cost (known costs
    summed; calls of unknown cost counted apart, never as $0), rate-limit hits, fallbacks, errors by
    kind; and per workstream type: workstreams, success rate (done / finished), cost."""
    store = _store(state_dir)
    try:
        rep = report_models.load_models_report(store, run_id)
    finally:
        store.close()
    click.echo(report_models.to_json(rep) if fmt == "json" else report_models.render_models_text(rep),
               nl=fmt != "json")
