"""The ``monitor`` command (loaded by the group in ``main`` when it is used).

Read-only: it opens the state DB with ``readonly=True`` and never writes.
"""

from __future__ import annotations

import signal
import sys

import click

from agentrun.cli.common import handle_errors, state_dir_option
from agentrun.views.output import silence
from agentrun.errors import EXIT_FAILED, EXIT_INTERRUPTED, UsageError
from agentrun.store.layout import layout_for, project_root
from agentrun.views.monitor import follow, recent_runs, render_summary
from agentrun.views.status import open_readonly, resolve_run


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: the cursor comes back, the DB is closed


@click.command()
@click.argument("run_id", required=False)
@click.option("--summary", is_flag=True, help="Print a summary of recent runs (or of RUN_ID) and exit.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=None,
              help="With --summary: how many recent runs (default 10).")
@click.option("--web", is_flag=True, help="Serve the live view as a web page, with /api/runs and /metrics.")
@click.option("--host", default=None, metavar="HOST",
              help="With --web: address to listen on (default 127.0.0.1, answering only requests for localhost "
              "names). Any other address exposes run data.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="With --web: port to listen on (default 8765; 0 picks a free one).")
@click.option("--exit-status", is_flag=True, help="Exit 1 if the followed run does not end done.")
@state_dir_option
@handle_errors
def monitor(run_id, summary, limit, web, host, port, exit_status, state_dir) -> None:
    """Follow RUN_ID (default: the latest run) live until it ends. Changes nothing.

    On a terminal a panel is redrawn in place; otherwise each event is printed
    as a line, then a summary line. Exits 0 when the run ends, 1 if its
    orchestrator is found dead (then run `agentrun recover RUN_ID`), 130 on
    Ctrl-C. With --web the first line printed is the URL served.
    """
    from agentrun.views import web as web_mod  # only --web needs http.server

    if not web and (host is not None or port is not None):
        raise UsageError("--host and --port go with --web")
    if web and summary:
        raise UsageError("--summary and --web cannot be combined")
    if not summary and limit is not None:
        raise UsageError("--limit goes with --summary")
    layout = layout_for(state_dir, project_root())
    store = open_readonly(layout)  # StateError (exit 2) for a missing or unusable DB; read-only from here
    old_term = signal.signal(signal.SIGTERM, _terminate)
    code = 0
    try:
        if summary:
            with store.snapshot():
                if run_id:
                    resolve_run(store, run_id)
            click.echo(render_summary(recent_runs(store, limit or 10, run_id)))
        elif web:
            if run_id:
                with store.snapshot():
                    resolve_run(store, run_id)
            code = web_mod.serve(store, layout, run_id, host, web_mod.DEFAULT_PORT if port is None else port)
        else:
            with store.snapshot():
                run = resolve_run(store, run_id)
            code = follow(store, layout.events_path(run["id"]), run["id"], sys.stdout, exit_status=exit_status)
    except KeyboardInterrupt:
        code = 0 if web else EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (``monitor | head``)
        silence(sys.stdout)
        code = EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, old_term)
        store.close()
    sys.exit(code)
