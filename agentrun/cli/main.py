"""The ``agentrun`` group and its entry point: global options, and each command loaded from its
module only when it is used, so that a command never imports what only another one needs."""

from __future__ import annotations

import importlib
import signal
import sys
import threading

import click

from agentrun.views.output import ForgivingOutput


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
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentrun")
def cli() -> None:
    """Run many units of development work in parallel under a dependency graph."""
    # Click calls this once the command's module is loaded, just before the command runs: from
    # here on Ctrl-C is the command's to handle (agentrun/__main__.py exits quietly until then).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    sys.stdout = ForgivingOutput(sys.stdout)
    sys.stderr = ForgivingOutput(sys.stderr)
    cli(standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main()
