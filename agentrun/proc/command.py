"""Running one command: in its own process group, bounded by a timeout, cancellable, its output
in a log. Commands of workstreams, setup and gates all run through here.

``AttemptContext`` and ``ExecResult`` are also the vocabulary of the executor seam
(``agentrun.agents``): what every way of doing a workstream gets and returns.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Callable

from agentrun.proc import process as procs
from agentrun.spec.command import Command


@dataclass
class AttemptContext:
    workdir: str
    env: dict[str, str]
    log_fd: int
    timeout: float | None
    cancel_fd: int | None
    on_spawn: Callable[[int, int], None] = lambda pid, pgid: None
    on_heartbeat: Callable[[], None] = lambda: None
    heartbeat: float | None = None
    check_output: Callable[[], float | None] | None = None   # looks at the log while a command runs


@dataclass
class ExecResult:
    status: str                 # "ok", "failed", "timeout", "cancelled"
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None


def run_command(command: Command, ctx: AttemptContext, *, timeout: float | None) -> ExecResult:
    """Run one command in its own process group, bounded by ``timeout`` and cancellable."""
    try:
        pid = procs.spawn(command.popen_args(), cwd=ctx.workdir, env=ctx.env, log_fd=ctx.log_fd)
    except OSError as exc:
        return ExecResult("failed", error=f"cannot start {command.display()!r}: {exc.strerror or exc}")
    end = procs.wait(pid, timeout=timeout, cancel_fd=ctx.cancel_fd, heartbeat=ctx.heartbeat,
                     on_heartbeat=ctx.on_heartbeat, on_running=lambda: ctx.on_spawn(pid, pid),
                     check_output=ctx.check_output)
    code = end.returncode
    sig = -code if code is not None and code < 0 else None
    exit_code = code if code is not None and code >= 0 else None
    if end.how == "timeout":
        return ExecResult("timeout", exit_code, sig, f"timed out after {timeout:g}s; process group stopped")
    if end.how == "cancelled":
        return ExecResult("cancelled", exit_code, sig, "stopped: run interrupted")
    if code == 0:
        return ExecResult("ok", 0)
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return ExecResult("failed", None, sig, f"killed by {name}")
    return ExecResult("failed", exit_code, None, f"exit code {exit_code}")
