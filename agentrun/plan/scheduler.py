"""Scheduling decisions: which ready workstream starts next.

Pure core. The runner tells the scheduler what finished; the scheduler says
what became ready, what is blocked, and what to start on free workers. The
same object drives ``simulate`` so the plan's makespan estimate follows the
exact policy the runner uses.
"""

from __future__ import annotations

import heapq
from typing import Iterable

from agentrun.plan.planner import Plan

EAGER = "eager"
WAVES = "waves"
SCHEDULES = (EAGER, WAVES)

# Attempts shorter than this are "short": handing out the next one costs a noticeable share
# of the attempt itself, so work is released ahead of free workers (see ``lookahead``).
SHORT_ATTEMPT_SECONDS = 0.05
SHORT_LOOKAHEAD_PER_WORKER = 16


def lookahead(workers: int, typical_attempt_seconds: float | None) -> int:
    """How many released jobs may wait for a worker, beyond the free workers.

    With short attempts a worker that finishes should find its next job waiting rather than
    ask for one, and releasing in batches saves the orchestrator a transaction per job. With
    long ones (or before any has finished) nothing waits: a job released early could start
    ahead of a better one that becomes ready meanwhile, and a round trip is nothing next to a
    long attempt.
    """
    if typical_attempt_seconds is None or typical_attempt_seconds >= SHORT_ATTEMPT_SECONDS:
        return 0
    return SHORT_LOOKAHEAD_PER_WORKER * workers


def to_release(workers: int, extra: int, inflight: int) -> int:
    """How many jobs to release now, with ``inflight`` released and unfinished and ``extra`` the
    lookahead. Without lookahead: whatever fills the free workers. With it: nothing until the
    waiting jobs run down to half of it (or a worker would go idle), then a batch up to full."""
    room = workers + extra - inflight
    if extra == 0 or inflight < workers or room >= extra // 2:
        return max(0, room)
    return 0


RESERVE_MAX = 8


def to_reserve(waiting: int, workers: int) -> int:
    """How many of ``waiting`` released jobs a worker takes when it claims. One, unless released
    work is plentiful, which it is only while attempts are short (see ``lookahead``): then a fair
    share, up to RESERVE_MAX, that the worker runs back to back and records with its next claim,
    one transaction for the lot."""
    return max(1, min(RESERVE_MAX, waiting // max(1, workers)))


class Scheduler:
    """A ready queue ordered by ``Plan.priority_key`` with optional wave barriers.

    Exclusion: two workstreams sharing an exclusion key (predicted conflict,
    ``conflict_group``) never run at once; an exclusive workstream
    (``parallel_ok = false``) runs alone.
    """

    def __init__(self, plan: Plan, mode: str = EAGER, completed: Iterable[str] = (),
                 blocked: Iterable[str] = ()):
        if mode not in SCHEDULES:
            raise ValueError(f"unknown schedule {mode!r}")
        self.plan = plan
        self.mode = mode
        self.keys = plan.exclusion_keys()
        self.exclusive = plan.exclusive()
        self.done: set[str] = set(completed)
        self.failed: set[str] = set()
        self.blocked: set[str] = set()
        self.running: set[str] = set()
        self.waiting: set[str] = set()      # out of the queue for a while (retry back-off)
        self._held: dict[str, int] = {}     # exclusion key -> holders running
        self._heap: list[tuple] = []
        self._queued: set[str] = set()
        self._missing = {w: sum(1 for d in ds if d not in self.done) for w, ds in plan.deps.items()}
        self._unfinished_in_wave = [0] * len(plan.waves)
        self.wave = 0
        for ws_id in plan.workstreams:
            if ws_id not in self.done:
                self._unfinished_in_wave[plan.wave_of[ws_id]] += 1
        for ws_id in blocked:
            self._block_with_dependents(ws_id)
        self.initially_ready = [w for w in sorted(plan.workstreams)
                                if w not in self.done and w not in self.blocked and self._missing[w] == 0]
        for ws_id in self.initially_ready:
            self._push(ws_id)
        self._advance_wave()

    # --- queries -------------------------------------------------------------
    def finished(self) -> bool:
        return not self.running and not self.waiting and not self._heap

    def pending(self) -> list[str]:
        """Workstreams not yet done, failed or blocked, in priority order."""
        settled = self.done | self.failed | self.blocked
        return sorted((w for w in self.plan.workstreams if w not in settled), key=self.plan.priority_key)

    def queued(self) -> list[str]:
        return sorted(self._queued, key=self.plan.priority_key)

    # --- decisions -----------------------------------------------------------
    def take(self, free: int) -> list[str]:
        """Up to ``free`` workstreams to start now, best first; they count as running."""
        chosen: list[str] = []
        skipped: list[tuple] = []
        if self.running & self.exclusive:
            return chosen
        held_back = False   # a candidate of the current wave was passed over for exclusion
        while free > 0 and self._heap:
            item = heapq.heappop(self._heap)
            ws_id = item[-1]
            if self.mode == WAVES and self.plan.wave_of[ws_id] != self.wave:
                skipped.append(item)
                continue
            if not self._may_start(ws_id):
                skipped.append(item)
                if ws_id in self.exclusive and not held_back:
                    break  # the best candidate needs the machine to itself: drain, start nothing else
                held_back = True
                continue
            self._queued.discard(ws_id)
            self._start(ws_id)
            chosen.append(ws_id)
            free -= 1
        for item in skipped:
            heapq.heappush(self._heap, item)
        return chosen

    def mark_done(self, ws_id: str) -> list[str]:
        """Record success; returns the workstreams that became ready."""
        self._stop(ws_id)
        self.done.add(ws_id)
        ready = []
        for child in self.plan.children[ws_id]:
            self._missing[child] -= 1
            if self._missing[child] == 0 and child not in self.blocked and child not in self.done:
                self._push(child)
                ready.append(child)
        self._settle(ws_id)
        return ready

    def mark_failed(self, ws_id: str) -> list[str]:
        """Record a final failure; returns the dependents now blocked (transitively)."""
        self._stop(ws_id)
        self.waiting.discard(ws_id)
        self._dequeue(ws_id)
        self.failed.add(ws_id)
        self._settle(ws_id)
        return self._block_dependents(ws_id)

    def defer(self, ws_id: str) -> None:
        """Take a running workstream out of the queue (waiting for its retry)."""
        self._stop(ws_id)
        self.waiting.add(ws_id)

    def requeue(self, ws_id: str) -> None:
        """Put a deferred or interrupted workstream back into the ready queue."""
        self.waiting.discard(ws_id)
        self._stop(ws_id)   # releases its exclusion keys if it was still running
        self._push(ws_id)

    def release(self, ws_id: str) -> None:
        """A running workstream stopped without an outcome (interrupted): free its slot."""
        self._stop(ws_id)

    # --- internals -----------------------------------------------------------
    def _push(self, ws_id: str) -> None:
        if ws_id not in self._queued:
            self._queued.add(ws_id)
            heapq.heappush(self._heap, (*self.plan.priority_key(ws_id), ws_id))

    def _may_start(self, ws_id: str) -> bool:
        if self.running & self.exclusive:
            return False
        if ws_id in self.exclusive and self.running:
            return False
        return not any(self._held.get(k) for k in self.keys[ws_id])

    def _start(self, ws_id: str) -> None:
        self.running.add(ws_id)
        for k in self.keys[ws_id]:
            self._held[k] = self._held.get(k, 0) + 1

    def _stop(self, ws_id: str) -> None:
        if ws_id in self.running:
            self.running.discard(ws_id)
            for k in self.keys[ws_id]:
                self._held[k] -= 1

    def _dequeue(self, ws_id: str) -> None:
        if ws_id in self._queued:
            self._queued.discard(ws_id)
            self._heap = [item for item in self._heap if item[-1] != ws_id]
            heapq.heapify(self._heap)

    def _block(self, ws_id: str) -> bool:
        """Block one workstream; False if it was already settled (never settle twice)."""
        if ws_id in self.blocked or ws_id in self.done or ws_id in self.failed:
            return False
        self.blocked.add(ws_id)
        self._dequeue(ws_id)
        self._settle(ws_id)
        return True

    def _block_dependents(self, ws_id: str) -> list[str]:
        blocked = []
        stack = list(self.plan.children[ws_id])
        while stack:
            child = stack.pop()
            if self._block(child):
                blocked.append(child)
                stack.extend(self.plan.children[child])
        return sorted(blocked)

    def _block_with_dependents(self, ws_id: str) -> None:
        """A workstream blocked before this scheduler existed: its dependents can never run either."""
        self._block(ws_id)
        self._block_dependents(ws_id)

    def _settle(self, ws_id: str) -> None:
        self._unfinished_in_wave[self.plan.wave_of[ws_id]] -= 1
        self._advance_wave()

    def _advance_wave(self) -> None:
        while self.wave < len(self.plan.waves) - 1 and self._unfinished_in_wave[self.wave] <= 0:
            self.wave += 1


def simulate(plan: Plan, workers: int, mode: str = EAGER,
             durations: dict[str, float] | None = None) -> float:
    """Makespan of running ``plan`` on ``workers`` with this scheduler's policy."""
    durations = durations or plan.estimates
    sched = Scheduler(plan, mode)
    clock = 0.0
    events: list[tuple[float, str]] = []
    while True:
        for ws_id in sched.take(workers - len(sched.running)):
            heapq.heappush(events, (clock + durations[ws_id], ws_id))
        if not events:
            return clock
        clock, ws_id = heapq.heappop(events)
        sched.mark_done(ws_id)
