"""The command executor: a workstream done by running its own command."""

from __future__ import annotations

from agentrun.proc.command import AttemptContext, ExecResult, run_command
from agentrun.spec.workstream import Workstream


class CommandExecutor:
    """``run = "..."``: a shell string or an argv list."""

    def execute(self, ws: Workstream, ctx: AttemptContext) -> ExecResult:
        return run_command(ws.run, ctx, timeout=ctx.timeout)

