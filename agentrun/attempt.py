"""One attempt of one workstream, from claim to durable outcome.

Runs inside a worker process (whatever the execution backend). It writes its
own transitions: claim, spawn, outcome. The outcome is committed to the state
DB before anyone is told, so a workstream is ``done`` only once that is durable.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import crashpoints, policy, procs
from .events import EventLog
from .executors import AttemptContext, ExecResult, executor_for
from .layout import Layout
from .spec import Workstream
from .state import StateStore

ATTEMPT_HEARTBEAT_SECONDS = 5.0


@dataclass(frozen=True)
class Job:
    ws_id: str
    attempt: int


@dataclass(frozen=True)
class Completion:
    ws_id: str
    attempt: int
    status: str                 # workstream status now: done, retrying, failed, interrupted, lost, skipped
    retry_at: float | None = None
    error: str | None = None


@dataclass
class RunContext:
    """What every attempt of a run shares; built by the orchestrator, inherited by workers."""

    run_id: str
    root: Path
    layout: Layout
    workstreams: dict[str, Workstream]
    max_attempts: dict[str, int]
    base_env: dict[str, str]


def attempt_env(ctx: RunContext, ws: Workstream, attempt: int, workdir: Path) -> dict[str, str]:
    env = dict(ctx.base_env)
    env.update(ws.env)
    env.update({
        "AGENTRUN_RUN_ID": ctx.run_id,
        "AGENTRUN_WS_ID": ws.id,
        "AGENTRUN_ATTEMPT": str(attempt),
        "AGENTRUN_RUN_DIR": str(ctx.layout.run_dir(ctx.run_id)),
        "AGENTRUN_WORKDIR": str(workdir),
    })
    return env


def run_attempt(job: Job, ctx: RunContext, store: StateStore, events: EventLog, *, lane: int,
                external_id: str, cancel_fd: int | None) -> Completion:
    ws = ctx.workstreams[job.ws_id]
    log_path = ctx.layout.log_path(ctx.run_id, ws.id, job.attempt)
    attempt_id = store.claim(ctx.run_id, ws.id, job.attempt, lane=lane, external_id=external_id,
                             log_path=str(log_path), now=time.time())
    if attempt_id is None:
        return Completion(ws.id, job.attempt, "skipped", error="not ready when claimed")
    crashpoints.hit("after-claim")
    events.emit("ws_started", ws.id, job.attempt, lane=lane, worker=external_id)

    workdir = ctx.root / ws.cwd if ws.cwd else ctx.root
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        def on_spawn(pid: int, pgid: int) -> None:
            store.record_spawn(attempt_id, pid, pgid, procs.proc_start_time(pid))
            crashpoints.hit("after-spawn")

        actx = AttemptContext(
            workdir=str(workdir), env=attempt_env(ctx, ws, job.attempt, workdir), log_fd=log_fd,
            timeout=ws.timeout, cancel_fd=cancel_fd, on_spawn=on_spawn,
            on_heartbeat=lambda: store.heartbeat_attempt(attempt_id, time.time()),
            heartbeat=ATTEMPT_HEARTBEAT_SECONDS)
        if not workdir.is_dir():
            result = ExecResult("failed", error=f"cwd {ws.cwd!r} does not exist in {ctx.root}")
        else:
            result = executor_for(ws).execute(ws, actx)
        if result.error and result.status != "ok":
            os.write(log_fd, f"\n[agentrun] {result.error}\n".encode())
    finally:
        os.close(log_fd)

    crashpoints.hit("before-done")
    return record_outcome(job, ctx, store, events, attempt_id, result)


def record_outcome(job: Job, ctx: RunContext, store: StateStore, events: EventLog, attempt_id: int,
                   result: ExecResult) -> Completion:
    ws = ctx.workstreams[job.ws_id]
    decision = policy.after_attempt(result.status, job.attempt, ctx.max_attempts[ws.id], ws.retry_backoff)
    now = time.time()
    retry_at = now + decision.retry_in if decision.retry_in is not None else None
    attempt_status = {"ok": "done", "cancelled": "cancelled"}.get(result.status, result.status)
    store.finish_attempt(attempt_id, ctx.run_id, ws.id, attempt_status=attempt_status,
                         ws_status=decision.ws_status, now=now, exit_code=result.exit_code,
                         signal=result.signal, error=result.error, retry_at=retry_at)
    crashpoints.hit("after-done")
    event = {"done": "ws_done", "retrying": "ws_retrying", "failed": "ws_failed",
             "interrupted": "ws_interrupted"}[decision.ws_status]
    extra = {"error": result.error} if result.error else {}
    if retry_at is not None:
        extra["retry_in"] = round(decision.retry_in or 0, 3)
    events.emit(event, ws.id, job.attempt, exit_code=result.exit_code, **extra)
    return Completion(ws.id, job.attempt, decision.ws_status, retry_at, result.error)
