"""The local backend: attempts run in a pool of worker processes on this machine.

``LocalProcessBackend`` keeps a pool of forked worker processes, so a
workstream costs a fork+exec of its command, never a fresh Python
interpreter. Each worker opens its own DB connection and event-log
descriptor after the fork, and claims released work itself (``Worker``).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import selectors
import signal
import sys
import time
from collections import deque
from multiprocessing.connection import Connection, wait as mp_wait
from typing import Callable

from agentrun.run import containment
from agentrun.store import crashpoints
from agentrun.proc import process as procs
from agentrun.run.attempt import Completion, Job, Outcome, RunContext, decide_outcome, execute_attempt
from agentrun.run.backends import Report, Requeued, Started, WorkerLost
from agentrun.store.events import EventLog
from agentrun.plan.scheduler import to_reserve
from agentrun.store.state import Claimed, ClaimResult, StateStore


class LostReservation(Exception):
    """A reserved attempt found its reservation gone (``recover`` ran while its worker was orphaned)."""


_FORK = multiprocessing.get_context("fork")
REPORT_BATCH = 32   # most outcomes a worker holds back (see _report_now)


def local_external_id(pid: int) -> str:
    """``local:<pid>:<start time>``: names one worker process even after its pid is reused."""
    return f"local:{pid}:{procs.proc_start_time(pid)}"


def parse_local_external_id(external_id: str | None) -> tuple[int, str] | None:
    if not external_id or not external_id.startswith("local:"):
        return None
    _, pid, start = external_id.split(":", 2)
    return int(pid), start


class _WorkerHandle:
    """The orchestrator's side of one worker process."""

    def __init__(self, lane: int, process, conn: Connection):
        self.lane = lane
        self.process = process
        self.conn = conn
        self.idle = False       # said it found nothing to claim, and has not been woken since
        self.seen = 0           # the highest queue number released when it last looked
        self.external_id = local_external_id(process.pid)


class LocalProcessBackend:
    """A pool of forked worker processes that claim released work from the state DB.

    A worker that finishes an attempt (or a batch of reserved short ones) records the outcomes
    and claims what it runs next in one transaction and goes straight on; it reports both on
    its pipe, and waits to be woken only when nothing is released.
    """

    def __init__(self, ctx: RunContext, workers: int, *, before_fork: Callable[[], None] = lambda: None,
                 after_fork: Callable[[], None] = lambda: None):
        self.ctx = ctx
        self.size = workers     # at most this many; each started only once there is work for it (grow)
        self._before_fork = before_fork
        self._after_fork = after_fork
        self._workers: list[_WorkerHandle] = []
        self._closing = False
        self._selector = selectors.DefaultSelector()
        self._extra: set[int] = set()

    def grow(self, busy: int) -> None:
        """Have a worker for each of ``busy`` released or running jobs, up to ``size``: a worker is
        started only once there is work it can have (a chain of twenty workstreams needs one)."""
        missing = min(busy, self.size) - len(self._workers)
        if missing > 0 and not self._closing:
            used = {w.lane for w in self._workers}
            self._spawn([lane for lane in range(self.size) if lane not in used][:missing])

    def _spawn(self, lanes) -> None:
        # Forking with an open SQLite connection in the parent is unsafe; the
        # orchestrator closes its connection around the fork.
        self._before_fork()
        # Everything allocated so far (specs, the plan) lives as long as the run: keep it out of
        # the cyclic collector's scans, here and in the workers, which inherit it.
        gc.freeze()
        try:
            for lane in lanes:
                parent, child = _FORK.Pipe()
                # The child must not keep the orchestrator's ends of any pipe, or it
                # would never see EOF when the orchestrator dies.
                theirs = [w.conn for w in self._workers] + [parent]
                proc = _FORK.Process(target=_worker_main, args=(child, lane, self.ctx, theirs),
                                     name=f"agentrun-worker-{lane}", daemon=False)
                proc.start()
                child.close()
                worker = _WorkerHandle(lane, proc, parent)
                self._workers.append(worker)
                self._selector.register(parent, selectors.EVENT_READ, worker)
                self._selector.register(proc.sentinel, selectors.EVENT_READ, worker)
        finally:
            self._after_fork()

    def submit(self, released: int) -> None:
        """Jobs up to queue number ``released`` are released: wake the idle workers that looked
        for work before the last of them was."""
        for w in self._workers:
            if w.idle and w.seen < released:
                w.idle = False
                w.seen = released
                try:
                    w.conn.send(True)
                except OSError:
                    pass  # it died; the next poll finds out

    def poll(self, timeout: float | None, extra_fds: list[int] = ()) -> list[Report]:
        """Reports that arrived within ``timeout`` (or once one of ``extra_fds`` is readable)."""
        for fd in extra_fds:
            if fd not in self._extra:
                self._extra.add(fd)
                self._selector.register(fd, selectors.EVENT_READ, None)
        out: list[Report] = []
        dead: list[_WorkerHandle] = []
        for key, _ in self._selector.select(timeout):
            worker = key.data
            if worker is None or worker in dead:
                continue
            if key.fileobj is worker.conn:
                # One message per wake-up; more pending keep the pipe readable for the next select.
                try:
                    self._unpack(worker, worker.conn.recv(), out)
                    continue
                except (EOFError, OSError):
                    pass
            elif worker.process.is_alive():
                continue
            dead.append(worker)
        for worker in dead:
            self._drain(worker, out)  # what it said before it went: its last reports precede its exit
            worker.process.join()
            # Whatever its attempts left running (a worker that exits normally has swept already).
            containment.sweep_dead_worker(self.ctx.cgroup, worker.lane, worker.process.pid,
                                          keep={w.process.pid for w in self._workers if w not in dead})
            out.append(WorkerLost(worker.external_id, f"worker process {worker.process.pid} died "
                                                      f"(exit code {worker.process.exitcode})"))
            self._selector.unregister(worker.conn)
            self._selector.unregister(worker.process.sentinel)
            self._workers.remove(worker)
            worker.conn.close()
        if dead and not self._closing:
            self._spawn([w.lane for w in dead])
            self._workers.sort(key=lambda w: w.lane)
        return out

    def _unpack(self, worker: _WorkerHandle, message, out: list[Report]) -> None:
        """A worker's message: outcomes it recorded, attempts it started, the release it had seen
        if it found nothing to claim, and whether it handed reserved work back."""
        done, started, idle_seen, given_back = message
        out.extend(done)
        out.extend(started)
        if given_back:
            out.append(Requeued(worker.external_id))
        worker.idle = idle_seen is not None
        if worker.idle:
            worker.seen = max(worker.seen, idle_seen)

    def _drain(self, worker: _WorkerHandle, out: list[Report]) -> None:
        try:
            while worker.conn.poll():
                self._unpack(worker, worker.conn.recv(), out)
        except (EOFError, OSError):
            pass

    def cancel(self, external_id: str) -> None:
        for w in self._workers:
            if w.external_id == external_id and w.process.is_alive():
                os.kill(w.process.pid, signal.SIGTERM)

    def cancel_all(self) -> None:
        """Stop every worker: running commands are stopped and recorded as interrupted."""
        self._closing = True
        for w in self._workers:
            self.cancel(w.external_id)

    def shutdown(self) -> list[Report]:
        """Tell workers to exit once idle, and collect reports until every one is gone."""
        self._closing = True
        for fd in self._extra:  # the caller's wake-up descriptors: nothing to wake for any more
            self._selector.unregister(fd)
        self._extra.clear()
        out: list[Report] = []
        for w in self._workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        while self._workers:
            out.extend(self.poll(1.0))
        self._selector.close()
        return out


def _worker_main(conn: Connection, lane: int, ctx: RunContext, parent_ends: list[Connection]) -> None:
    """What a forked worker process runs."""
    for end in parent_ends:
        end.close()
    Worker(conn, lane, ctx).run()


class Worker:
    """One worker process: record the last outcomes and claim the next job (or reserve a batch
    of short ones), run it; sleep when nothing is released; stop when told to, when the
    orchestrator goes away, or on SIGTERM or SIGINT, handing back what it reserved and did not
    start."""

    def __init__(self, conn: Connection, lane: int, ctx: RunContext):
        self.conn = conn
        self.lane = lane
        self.ctx = ctx
        # SIGTERM (the orchestrator stopping the run) and Ctrl-C (which reaches the whole foreground
        # group, orchestrator included) both mean: stop the current command, record it, claim
        # nothing more and exit. The signal's byte on ``wake_r`` is what interrupts the command.
        # Handlers, not SIG_IGN: an ignored signal stays ignored across exec, and the commands this
        # worker starts must get the default behaviour.
        self.orchestrator = crashpoints.orchestrator_pid = os.getppid()
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        self.stopping = False
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.set_wakeup_fd(wake_w)
        self.sweeper = containment.Sweeper(ctx.cgroup, lane)
        self.store = StateStore(ctx.layout.db_path)
        self.events = EventLog(ctx.layout.events_path(ctx.run_id), ctx.run_id)
        self.external_id = local_external_id(os.getpid())
        self.spool = ctx.spool_path(lane)
        self.batch: deque[Claimed] = deque()    # claimed or reserved, not started yet
        self.unrecorded: list[Outcome] = []     # outcomes decided, not yet in the DB
        self.unsent: list[Completion] = []      # recorded, not yet told to the orchestrator
        self.give_back: list[str] = []          # reservations this worker will not run
        self.given_back = False                 # since the last report: idle workers may take them

    def _on_stop(self, signum, frame) -> None:
        self.stopping = True

    def run(self) -> None:
        try:
            while True:
                # Start nothing new once told to stop or orphaned (the orchestrator would not hear of it).
                go_on = not self.stopping and os.getppid() == self.orchestrator
                if self.batch and not go_on:  # reserved and not started: back to the queue
                    self.give_back.extend(c.ws_id for c in self.batch)
                    self.batch.clear()
                if not self.batch:
                    if not self.claim_batch(go_on):
                        break
                    if not self.batch:  # woken: look again
                        continue
                self.run_attempt(self.batch.popleft())
        except Exception as exc:  # noqa: BLE001 - one line, not a traceback; the orchestrator reconciles
            print(f"agentrun: worker {self.lane}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            sys.exit(1)
        finally:
            self.stop()
        try:  # what the last silent attempt left in the spool; a crashed worker's stays with its attempt
            os.unlink(self.spool)
        except FileNotFoundError:
            pass

    def claim_batch(self, go_on: bool) -> bool:
        """Record the outcomes held and claim what runs next into ``batch``; with nothing
        released, report and sleep until woken. False: the worker is to stop."""
        got = self.record_and_claim(go_on)
        if not got.claimed:
            return self.report([], got.released) and go_on and _wait_for_work(self.conn, self.wake_r)
        self.batch.extend(got.claimed)
        started = [Started(c.ws_id, c.attempt, self.external_id) for c in got.claimed if not c.reserved]
        return not _report_now(self.ctx, self.unsent, got.claimed[-1]) or self.report(started)

    def run_attempt(self, claimed: Claimed) -> None:
        """Run one claimed or reserved attempt; its outcome is held in ``unrecorded``."""
        began, began_wall = time.monotonic(), time.time()
        if claimed.reserved:
            hooks = {"start_reserved": self._start_reserved(claimed, began_wall)}
        else:
            # An attempt that turns out long reports what was held back, and that it started.
            held = Started(claimed.ws_id, claimed.attempt, self.external_id)
            hooks = {"on_long": (lambda: self.report([held])) if self.unsent else None}
        result, log_path, attempt_id = execute_attempt(claimed, self.ctx, self.store, self.events, lane=self.lane,
                                                       cancel_fd=self.wake_r, sweep=self.sweeper.sweep, **hooks)
        crashpoints.hit("before-done")
        self.unrecorded.append(decide_outcome(Job(claimed.ws_id, claimed.attempt), self.ctx, self.store, attempt_id,
                                              result, log_path, set_log=True, seconds=time.monotonic() - began,
                                              started_at=began_wall))

    def report(self, started: list[Started], idle_seen: int | None = None) -> bool:
        try:
            self.conn.send((self.unsent, started, idle_seen, self.given_back))
        except OSError:
            return False  # orchestrator gone; outcomes are durable in the DB, a claim is found by recovery
        self.unsent = []
        self.given_back = False
        return True

    def stop(self) -> None:
        self.sweeper.sweep()
        self.store.close()
        self.events.close()

    def record_and_claim(self, go_on: bool) -> ClaimResult:
        got = self.store.finish_and_claim(self.ctx.run_id, [o.finish for o in self.unrecorded], claim=go_on,
                                          lane=self.lane, external_id=self.external_id, log_path=self.spool,
                                          now=time.time(),
                                          reserve=lambda waiting: to_reserve(waiting, self.ctx.max_workers),
                                          reservable=self.ctx.reservable, give_back=self.give_back)
        if self.unrecorded:
            crashpoints.hit("after-done")
        records: list = []
        self._recorded(got.recorded, records)
        for c in got.claimed:
            if not c.reserved:
                crashpoints.hit("after-claim")
                records.append(self._started_event(c.ws_id, c.attempt))
        self.events.emit_all(records)
        return got

    def _started_event(self, ws_id: str, attempt: int, **extra) -> tuple:
        return ("ws_started", ws_id, attempt, {"lane": self.lane, "worker": self.external_id, **extra})

    def _recorded(self, flags: list[bool], records: list) -> None:
        """After the transaction that recorded ``unrecorded`` (``flags``: which of them it could)
        and ``give_back``: the events, and the outcomes to tell."""
        for o, ok in zip(self.unrecorded, flags):
            if not ok:  # no longer this worker's: recover took it back while we were orphaned
                continue
            if o.finish.attempt_id is None:  # a reserved attempt: its start is logged with its outcome
                records.append(self._started_event(o.finish.ws_id, o.finish.attempt, started_at=o.finish.started_at))
            records.append(o.event)
            self.unsent.append(o.completion)
        self.unrecorded.clear()
        self.given_back = self.given_back or bool(self.give_back)
        self.give_back.clear()

    def _start_reserved(self, claimed: Claimed, began: float) -> Callable[[int, int, str | None], int]:
        def start(pid: int, pgid: int, proc_start: str | None) -> int:
            # It runs long: what ran before it is recorded, the rest of the batch goes back to
            # the queue for idle workers, and it becomes an ordinary running attempt.
            self.give_back.extend(c.ws_id for c in self.batch)
            self.batch.clear()
            attempt_id, flags = self.store.start_reserved(self.ctx.run_id, claimed,
                                                          [o.finish for o in self.unrecorded], self.give_back,
                                                          lane=self.lane, external_id=self.external_id,
                                                          started_at=began, pid=pid, pgid=pgid, proc_start=proc_start)
            records: list = []
            self._recorded(flags, records)
            if attempt_id is not None:
                records.append(self._started_event(claimed.ws_id, claimed.attempt))
            self.events.emit_all(records)
            self.report([Started(claimed.ws_id, claimed.attempt, self.external_id)] if attempt_id is not None else [])
            if attempt_id is None:  # raised inside the wait: the command is stopped
                raise LostReservation(f"{claimed.ws_id} is no longer reserved by this worker")
            return attempt_id
        return start


def _report_now(ctx: RunContext, unsent: list[Completion], claimed: Claimed) -> bool:
    """Whether to tell the orchestrator now, having claimed the next job. Released work is
    plentiful only while attempts are short (see ``scheduler.lookahead``); then successes are
    saved up, up to ``REPORT_BATCH``, until the released work runs low, so that a stream of tiny
    workstreams does not wake the orchestrator for every one. Anything else is told at once."""
    if len(unsent) >= REPORT_BATCH or claimed.waiting < ctx.max_workers:
        return True
    return any(c.status != "done" for c in unsent)


def _wait_for_work(conn: Connection, wake_r: int) -> bool:
    """Sleep until woken (True) or told to stop (False: a stop message, EOF, or a signal)."""
    ready = mp_wait([conn, wake_r])
    if wake_r in ready:
        return False
    try:
        while conn.poll():
            if conn.recv() is None:
                return False
    except (EOFError, OSError):
        return False
    return True
