"""The ``agentrun`` group and its entry point: global options, and each command loaded from its
module only when it is used, so that a command never imports what only another one needs."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading

import click

from agentrun.errors import EXIT_INTERRUPTED
from agentrun.views.output import ForgivingOutput


@contextlib.contextmanager
def _quiet_interrupt():
    """Ctrl-C while a command's modules load exits 130 at once, as during ``__main__``'s own imports:
    nothing is done yet, so nothing needs tidying, and a traceback from the import would be noise."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: os._exit(EXIT_INTERRUPTED))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


class LazyGroup(click.Group):
    """Loads a command's module only when that command is used: every ``status`` would otherwise
    import the orchestrator, and every ``run`` the HTML report, the web server and the terminal panel."""

    LAZY = {"plan": "agentrun.cli.run:plan", "run": "agentrun.cli.run:run", "resume": "agentrun.cli.run:resume",
            "status": "agentrun.cli.state:status_cmd", "logs": "agentrun.cli.state:logs",
            "recover": "agentrun.cli.state:recover", "models": "agentrun.cli.models:models",
            "clean": "agentrun.cli.clean:clean", "monitor": "agentrun.cli.monitor:monitor",
            "report": "agentrun.cli.report:report"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY:
            module, attribute = self.LAZY[name].split(":")
            with _quiet_interrupt():
                return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentrun")
def cli() -> None:
    """Run many units of development work in parallel under a dependency graph."""


def main() -> None:
    sys.stdout = ForgivingOutput(sys.stdout)
    sys.stderr = ForgivingOutput(sys.stderr)
    cli(standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main()
