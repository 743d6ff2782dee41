"""Where workstreams execute: the backend seam (submit / poll / cancel).

The orchestrator talks to a backend only through ``Backend`` and the reports it returns
(``Started``, ``Completion``, ``WorkerLost``, ``Requeued``). ``local.LocalProcessBackend`` runs
attempts in a pool of forked worker processes. A distributed backend (Ray, say) implements the
same methods; its workers claim released work the same way, and the external id that names
where an attempt runs is kept in the DB with each attempt, so recovery can find it after a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agentrun.run.attempt import Completion


class Backend(Protocol):
    """Where attempts run.

    The orchestrator releases ready work in the state DB (``StateStore.dispatch``), numbered in
    the order it should start, and calls ``submit`` with the highest number released.
    Whoever executes them claims the next released workstream itself and records its external
    id with the attempt; ``poll`` returns what happened since: ``Started``, ``Completion``,
    ``Requeued`` and ``WorkerLost`` reports. ``grow`` is told how many jobs are released or
    running, so executors are started only once there is work they can have.
    """

    size: int

    def grow(self, busy: int) -> None: ...
    def submit(self, released: int) -> None: ...
    def poll(self, timeout: float | None, extra_fds: list[int] = ...) -> list[Report]: ...
    def cancel(self, external_id: str) -> None: ...
    def cancel_all(self) -> None: ...
    def shutdown(self) -> list[Report]: ...


@dataclass(frozen=True)
class Started:
    ws_id: str
    attempt: int
    external_id: str


@dataclass(frozen=True)
class WorkerLost:
    """A worker died: whatever it had claimed and not reported must be found in the DB."""

    external_id: str
    error: str


@dataclass(frozen=True)
class Requeued:
    """A worker handed work it had reserved back to the queue (it found a long attempt among
    it): workers that found nothing to claim should look again."""

    external_id: str


# ``Completion`` is defined with the attempt's outcome (``run.attempt``), which decides it.
Report = Started | Completion | WorkerLost | Requeued
