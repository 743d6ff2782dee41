"""What every command module shares: the --state-dir option, error-to-exit-code mapping, and
output that never stops work."""

from __future__ import annotations

import functools
import os
import sys

import click

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, AgentrunError

state_dir_option = click.option("--state-dir", type=click.Path(file_okay=False),
                                help="State directory (default: .agentrun/ in the project root).")


def silence(stream) -> None:
    """Python's recipe for a reader that went away (``agentrun status | head``): point the stream's
    descriptor at /dev/null, so that what is still buffered, later writes and the interpreter's
    final flush go nowhere instead of failing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError):
        pass  # not backed by a descriptor (or already closed): nothing will flush to it
    finally:
        os.close(devnull)


class ForgivingOutput:
    """stdout or stderr of a command: once a write or flush fails (the reader of a pipe went away,
    a full disk, a closed terminal) the stream is silenced and output is dropped from then on, so
    that an output problem never stops work: ``agentrun run | head -3`` still runs to its end,
    records it and exits with its own code. ``reader_gone`` tells followers (``monitor``) that
    nobody reads any more."""

    def __init__(self, stream):
        self._stream = stream
        self.reader_gone = False

    def write(self, text):
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except OSError:
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except OSError:
                self._lose()

    def _lose(self) -> None:
        self.reader_gone = True
        silence(self._stream)

    def __getattr__(self, name):
        return getattr(self._stream, name)


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
