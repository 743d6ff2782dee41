"""Named crash points for recovery tests.

``AGENTRUN_CRASH_AT=<point>`` (or ``<point>:<n>`` for the n-th time the point
is reached in this process) makes the process SIGKILL itself there (a worker takes its
orchestrator with it), exactly as kill -9 or the OOM killer would: no cleanup,
no flush.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "after-claim",          # worker: attempt row committed, command not started
    "after-spawn",          # worker: command running, pid recorded
    "before-done",          # worker: command finished, outcome not recorded
    "after-done",           # worker: outcome committed, orchestrator not told
    "during-integration",   # worker: inside the merge queue, integration branch not advanced
    "after-integration",    # worker: result integrated and recorded, its worktree not removed yet
    "mid-event-write",      # any writer: half an event line written
    "orchestrator-loop",    # orchestrator: between scheduling steps
)

_counts: dict[str, int] = {}
# Set in worker processes: a crash there takes the orchestrator down too, so a
# crash point models "agentrun died at this step", not a lone worker death.
orchestrator_pid: int | None = None


def _die() -> None:
    if orchestrator_pid:
        try:
            os.kill(orchestrator_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


# Read once per process: points are hit several times per attempt, and the setting is fixed
# for a process's life (tests set it in the environment of the agentrun they start).
_SPEC = os.environ.get("AGENTRUN_CRASH_AT")


def _armed(point: str) -> bool:
    spec = _SPEC
    if not spec:
        return False
    name, _, nth = spec.partition(":")
    if name != point:
        return False
    _counts[point] = _counts.get(point, 0) + 1
    return _counts[point] == (int(nth) if nth else 1)


def hit(point: str) -> None:
    if _armed(point):
        _die()


def torn_write(fd: int, line: bytes) -> None:
    """At ``mid-event-write``: write half of ``line`` and die, leaving a torn tail."""
    if _armed("mid-event-write"):
        os.write(fd, line[: max(1, len(line) // 2)])
        _die()
