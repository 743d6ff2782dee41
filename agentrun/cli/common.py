"""What the command modules share: the --state-dir option, checked number options and
error-to-exit-code mapping."""

from __future__ import annotations

import functools
import sys

import click

from agentrun.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, AgentrunError
from agentrun.spec.values import number, shown, whole_number

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
