"""Where workstreams execute: the backend seam (submit / poll / cancel).

``LocalProcessBackend`` keeps a pool of forked worker processes, so a
workstream costs a fork+exec of its command, never a fresh Python
interpreter. Each worker opens its own DB connection and event-log
descriptor after the fork. A distributed backend (Ray, say) implements the
same four methods; the external id it returns is recorded with the attempt.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from multiprocessing.connection import Connection, wait as mp_wait
from typing import Callable, Protocol

from . import crashpoints, procs
from .attempt import Completion, Job, RunContext, run_attempt
from .events import EventLog
from .state import StateStore


class Backend(Protocol):
    """Where attempts run. ``submit`` returns the backend's id for the attempt (also recorded
    with the attempt by the worker that claims it); ``poll`` returns finished attempts."""

    def free_slots(self) -> int: ...
    def submit(self, job: Job) -> str: ...
    def poll(self, timeout: float | None, extra_fds: list[int] = ...) -> list[Completion]: ...
    def cancel(self, external_id: str) -> None: ...
    def cancel_all(self) -> None: ...
    def shutdown(self) -> list[Completion]: ...


_FORK = multiprocessing.get_context("fork")


def local_external_id(pid: int) -> str:
    """``local:<pid>:<start time>``: names one worker process even after its pid is reused."""
    return f"local:{pid}:{procs.proc_start_time(pid)}"


def parse_local_external_id(external_id: str | None) -> tuple[int, str] | None:
    if not external_id or not external_id.startswith("local:"):
        return None
    _, pid, start = external_id.split(":", 2)
    return int(pid), start


class _Worker:
    def __init__(self, lane: int, process, conn: Connection):
        self.lane = lane
        self.process = process
        self.conn = conn
        self.job: Job | None = None
        self.external_id = local_external_id(process.pid)


class LocalProcessBackend:
    def __init__(self, ctx: RunContext, workers: int, *, before_fork: Callable[[], None] = lambda: None,
                 after_fork: Callable[[], None] = lambda: None):
        self.ctx = ctx
        self.size = workers
        self._before_fork = before_fork
        self._after_fork = after_fork
        self._workers: list[_Worker] = []
        self._closing = False
        self._spawn(range(workers))

    def _spawn(self, lanes) -> None:
        # Forking with an open SQLite connection in the parent is unsafe; the
        # orchestrator closes its connection around the fork.
        self._before_fork()
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
                self._workers.append(_Worker(lane, proc, parent))
        finally:
            self._after_fork()

    def free_slots(self) -> int:
        return sum(1 for w in self._workers if w.job is None)

    def submit(self, job: Job) -> str:
        worker = next(w for w in self._workers if w.job is None)
        worker.job = job
        worker.conn.send(job)
        return worker.external_id

    def poll(self, timeout: float | None, extra_fds: list[int] = ()) -> list[Completion]:
        """Completions that arrived within ``timeout``; a dead worker's job comes back as ``crashed``."""
        watch: dict[object, _Worker] = {}
        for w in self._workers:
            watch[w.conn] = w
            watch[w.process.sentinel] = w
        ready = mp_wait(list(watch) + list(extra_fds), timeout)
        out: list[Completion] = []
        dead: list[_Worker] = []
        for obj in ready:
            worker = watch.get(obj)
            if worker is None or worker in dead:
                continue
            if obj is worker.conn:
                try:
                    while worker.conn.poll():
                        out.append(worker.conn.recv())
                        worker.job = None
                except (EOFError, OSError):
                    dead.append(worker)
            elif not worker.process.is_alive():
                dead.append(worker)
        for worker in dead:
            worker.process.join()
            if worker.job is not None:
                out.append(Completion(worker.job.ws_id, worker.job.attempt, "crashed",
                                      error=f"worker process {worker.process.pid} died "
                                            f"(exit code {worker.process.exitcode})"))
            self._workers.remove(worker)
            worker.conn.close()
        if dead and not self._closing:
            self._spawn([w.lane for w in dead])
            self._workers.sort(key=lambda w: w.lane)
        return out

    def cancel(self, external_id: str) -> None:
        for w in self._workers:
            if w.external_id == external_id and w.process.is_alive():
                os.kill(w.process.pid, signal.SIGTERM)

    def cancel_all(self) -> None:
        self._closing = True
        for w in self._workers:
            if w.job is not None:
                self.cancel(w.external_id)

    def shutdown(self) -> list[Completion]:
        """Wait for busy workers (already told to cancel, or finishing), then stop them all."""
        self._closing = True
        out: list[Completion] = []
        while any(w.job is not None for w in self._workers):
            out.extend(self.poll(1.0))
        for w in self._workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
            w.process.join()
            w.conn.close()
        self._workers = []
        return out


def _worker_main(conn: Connection, lane: int, ctx: RunContext, parent_ends: list[Connection]) -> None:
    """Worker loop: run jobs until told to stop, the orchestrator goes away, or SIGTERM."""
    for end in parent_ends:
        end.close()
    # Ctrl-C reaches the whole foreground group; the orchestrator decides what
    # stops. SIGTERM means "stop the current command cleanly and exit".
    # A handler, not SIG_IGN: an ignored signal stays ignored across exec, and the
    # commands this worker starts must get the default SIGINT behaviour.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    crashpoints.orchestrator_pid = os.getppid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.set_wakeup_fd(wake_w)
    store = StateStore(ctx.layout.db_path)
    events = EventLog(ctx.layout.events_path(ctx.run_id), ctx.run_id)
    external_id = local_external_id(os.getpid())
    try:
        while not stopping:
            ready = mp_wait([conn, wake_r])
            if stopping or conn not in ready:
                break
            try:
                job = conn.recv()
            except (EOFError, OSError):
                break
            if job is None:
                break
            if stopping:
                conn.send(Completion(job.ws_id, job.attempt, "skipped", error="worker stopping"))
                break
            result = run_attempt(job, ctx, store, events, lane=lane, external_id=external_id,
                                 cancel_fd=wake_r)
            try:
                conn.send(result)
            except OSError:
                break  # orchestrator gone; the outcome is already durable in the DB
    finally:
        store.close()
        events.close()
