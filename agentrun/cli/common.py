"""What every command module shares: the --state-dir option and error-to-exit-code mapping."""

from __future__ import annotations

import functools
import sys

import click

from agentrun.errors import EXIT_FAILED, EXIT_INTERRUPTED, AgentrunError

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
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except OSError as exc:  # the machine's refusal (permissions, a full disk): one line, no traceback
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            sys.exit(EXIT_FAILED)
    return wrapper
