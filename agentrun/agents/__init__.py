"""How a workstream is done: the executor seam.

An executor gets an ``AttemptContext`` (where to work, environment, log, limits, a cancel
descriptor) and returns an ``ExecResult``. It knows nothing of SQL, scheduling or git.
``command.CommandExecutor`` runs ``run = ...``; ``llm.agent.LLMAgentExecutor`` is the built-in
LLM agent; external agent CLIs plug in here too.

May import: ``agentrun.proc``, ``agentrun.plan``, ``agentrun.store``, ``agentrun.spec``,
``agentrun.errors``. Never ``git``, ``run``, ``views`` or ``cli``.
"""

from __future__ import annotations

from typing import Protocol

from agentrun.proc.command import AttemptContext, ExecResult
from agentrun.spec.workstream import Workstream


class Executor(Protocol):
    def execute(self, ws: Workstream, ctx: AttemptContext) -> ExecResult: ...
