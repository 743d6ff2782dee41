"""One attempt of one workstream, from claim to durable outcome.

Runs inside a worker process (whatever the execution backend). The worker
claims the attempt and records its outcome (``StateStore.finish_and_claim``);
this module runs what lies between and decides that outcome, writing the
attempt's own transitions on the way (spawn, gates, integration). The outcome
is committed to the state DB before anyone is told, so a workstream is
``done`` only once that is durable.

Steps: claim -> workspace (a worktree at the integration tip, or in place)
-> setup -> baseline gates -> the work -> commit and verify (changes, scope,
gates) -> merge queue -> outcome.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agentrun.store import crashpoints
from agentrun.plan import retry as policy
from agentrun.proc import process as procs
from agentrun.store import redaction
from agentrun.errors import AgentrunError
from agentrun.store.events import EventLog
from agentrun.agents import Executor
from agentrun.agents.command import CommandExecutor
from agentrun.proc.command import AttemptContext, ExecResult, run_command
from agentrun.git.merge import already_integrated, commit_message, integrate
from agentrun.git.verify import GateRunner, free_port, verify
from agentrun.git.worktrees import (GitRun, Workspace, integration_tip, leaving_path, prepare_workspace,
                                    rescue_and_remove, rescue_ref)
from agentrun.store.layout import Layout
from agentrun.spec.workstream import Budget, LLMSettings, Workstream
from agentrun.store.state import Claimed, Finish, StateStore

ATTEMPT_HEARTBEAT_SECONDS = 5.0
# A kept log holds at most the first LOG_HEAD_BYTES and the last LOG_TAIL_BYTES of an attempt's output.
LOG_HEAD_BYTES = 1 << 20
LOG_TAIL_BYTES = 7 << 20
# While a command runs, what its log will not keep is given back to the file system each time the
# log has grown this much past those (see RunningLog). The log is looked at every LOG_CHECK_SECONDS,
# and while it grows fast about every LOG_SLACK_BYTES of output, at most every LOG_CHECK_MIN_SECONDS.
LOG_SLACK_BYTES = 1 << 20
LOG_CHECK_SECONDS = 0.25
LOG_CHECK_MIN_SECONDS = 0.01
HOLE_ALIGN_BYTES = 4096   # a file-system block: a hole frees whole blocks only
SPOOL_PREFIX = ".lane-"   # how the name of a worker's spool (RunContext.spool_path) begins


@dataclass(frozen=True)
class Job:
    ws_id: str
    attempt: int


@dataclass(frozen=True)
class Completion:
    ws_id: str
    attempt: int
    status: str                 # workstream status now: done, retrying, failed, conflict, interrupted
    retry_at: float | None = None
    error: str | None = None
    seconds: float | None = None  # how long the attempt took, claim to outcome


@dataclass
class RunContext:
    """What every attempt of a run shares; built by the orchestrator, inherited by workers."""

    run_id: str
    root: Path
    layout: Layout
    workstreams: dict[str, Workstream]
    max_attempts: dict[str, int]
    base_env: dict[str, str]
    git: GitRun | None = None
    llm: LLMSettings | None = None
    max_workers: int = 1
    cgroup: str | None = None       # the run's cgroup (see containment), None where there is none

    def __post_init__(self) -> None:
        # Strings, computed once: path arithmetic per attempt is measurable with thousands of tiny ones.
        self.run_dir = str(self.layout.run_dir(self.run_id))
        self.logs_dir = str(self.layout.logs_dir(self.run_id))
        self._lanes: dict[int, tuple[str, str]] = {}
        self._spool: tuple[int, str] | None = None
        # API keys stay with the code that calls the model: commands, setup and gates get a
        # workstream's ``secrets`` back by name, and nothing else of them.
        names = redaction.secret_names(self.llm.models if self.llm is not None else None)
        self.secrets = redaction.run_secrets(names, self.base_env)
        self.command_env = {k: v for k, v in self.base_env.items() if k not in names}

    def isolated(self, ws: Workstream) -> bool:
        return self.git is not None and ws.isolation != "none"

    def reservable(self, ws_id: str) -> bool:
        """Whether an attempt of this workstream may run reserved, its rows written only with its
        outcome (see ``StateStore.finish_and_claim``): a plain command in place, which writes
        nothing else to the state DB while it runs."""
        ws = self.workstreams[ws_id]
        return not (ws.agent or ws.setup or ws.gates or self.isolated(ws))

    def log_path(self, ws_id: str, attempt: int) -> str:
        return f"{self.logs_dir}/{ws_id}.{attempt}.log"

    def spool_path(self, lane: int) -> str:
        """Where this worker's running attempt writes its log, kept as ``log_path`` if worth
        keeping. Named for the process (pid and start time), so that the file of an attempt a
        crashed worker left behind is never taken over by another worker."""
        if self._spool is None or self._spool[0] != os.getpid():
            pid = os.getpid()
            self._spool = (pid, f"{self.logs_dir}/{SPOOL_PREFIX}{lane}.{pid}-{procs.proc_start_time(pid)}.log")
        return self._spool[1]

    def lane(self, lane: int) -> tuple[str, str]:
        """(port, temporary directory) of a worker lane. A lane runs one attempt at a time, so
        its port and directory are never shared by two running workstreams; the port is picked
        once per worker process (each has its own copy of this context)."""
        if lane not in self._lanes:
            self._lanes[lane] = (str(free_port()), str(self.layout.tmp_dir(self.run_id, lane)))
        return self._lanes[lane]

    def forget_port(self, lane: int) -> None:
        """After a failed attempt: the next one gets a freshly picked port, in case something
        else has taken this one meanwhile."""
        self._lanes.pop(lane, None)


def llm_concurrency(max_workers: int) -> int:
    """The starting cap of the shared limiter. AGENTRUN_LLM_LIMITER=off lifts it (for benchmarks)."""
    if os.environ.get("AGENTRUN_LLM_LIMITER") == "off":
        return 1_000_000
    return max(1, max_workers)


def fresh_tmpdir(path: str) -> str:
    """An empty private temporary directory. One per worker lane, emptied between attempts:
    no two running workstreams share it, and making a directory per attempt costs more
    than most short commands.

    The last attempt may have replaced it, or the ``tmp`` directory above it, with a symlink or
    a file. Each is opened without following symlinks from the run's directory down, anything
    in the way is removed, and the emptying works through those descriptors: it can never
    delete anything outside."""
    run_dir, tmp, lane = path.rsplit("/", 2)
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in (tmp, lane):
            parent, fd = fd, _open_own_dir(fd, name)
            os.close(parent)
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.name, dir_fd=fd, ignore_errors=True)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    return path


def _open_own_dir(parent: int, name: str) -> int:
    """``name`` in the directory ``parent`` as a directory descriptor, made if missing; a symlink
    or file of that name is removed first, never followed."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            os.unlink(name, dir_fd=parent)
        elif exc.errno != errno.ENOENT:
            raise
    try:
        os.mkdir(name, dir_fd=parent)
    except FileExistsError:
        pass  # another worker made the shared tmp directory at the same moment
    return os.open(name, flags, dir_fd=parent)


def conversation_path(layout: Layout, run_id: str, ws_id: str, attempt: int) -> Path:
    return layout.run_dir(run_id) / "conversations" / f"{ws_id}.{attempt}.jsonl"


def attempt_env(ctx: RunContext, ws: Workstream, attempt: int, workdir: Path, conflict_files: list[str],
                lane: int) -> dict[str, str]:
    env = dict(ctx.command_env)
    for name in ws.secrets:
        if name in ctx.base_env:
            env[name] = ctx.base_env[name]
    env.update(ws.env)
    port, tmpdir = ctx.lane(lane)
    env["AGENTRUN_RUN_ID"] = ctx.run_id
    env["AGENTRUN_WS_ID"] = ws.id
    env["AGENTRUN_ATTEMPT"] = str(attempt)
    env["AGENTRUN_RUN_DIR"] = ctx.run_dir
    env["AGENTRUN_WORKDIR"] = str(workdir)
    env["AGENTRUN_WORKTREE"] = str(workdir) if ctx.isolated(ws) else ""
    env["AGENTRUN_PORT"] = port
    env["TMPDIR"] = fresh_tmpdir(tmpdir)
    if conflict_files:
        env["AGENTRUN_CONFLICT_FILES"] = "\n".join(conflict_files)
    return env


class Attempt:
    """The steps of one claimed attempt; ``run`` returns the ExecResult that decides its outcome."""

    def __init__(self, job: Job, ctx: RunContext, store: StateStore, events: EventLog, attempt_id: int | None,
                 conflict_files: str | None, log_fd: int, cancel_fd: int | None, lane: int = 0,
                 on_long: Callable[[], object] | None = None,
                 start_reserved: Callable[[int, int, str | None], int] | None = None):
        self.job, self.ctx, self.store, self.events = job, ctx, store, events
        self.lane = lane
        self.on_long = on_long  # called once if the attempt turns out not to be short
        self.start_reserved = start_reserved  # for a reserved attempt: claims it properly, returns its id
        self.conflict_files: list[str] = json.loads(conflict_files) if conflict_files else []
        self.ws = ctx.workstreams[job.ws_id]
        self.attempt_id = attempt_id
        self.log_fd = log_fd
        self.cancel_fd = cancel_fd
        self.wsp: Workspace | None = None
        self.integrated = False
        self.header: bytes | None = None  # a routine first line, written only if the log is kept

    def log(self, text: str, *, routine: bool = False) -> None:
        line = f"[agentrun] {text}\n".encode()
        if routine and os.fstat(self.log_fd).st_size == 0:
            self.header = line
        else:
            os.write(self.log_fd, line)

    def _record_gate(self, phase, gate, status, exit_code, started, finished) -> None:
        self.store.record_gate(self.ctx.run_id, self.ws.id, self.job.attempt, phase, gate, status, exit_code,
                               started, finished)
        kind = {"passed": "gate_passed", "pre-existing": "gate_preexisting"}.get(status, "gate_failed")
        self.events.emit(kind, self.ws.id, self.job.attempt, gate=gate, phase=phase, status=status)

    def _on_spawn(self, pid: int, pgid: int) -> None:
        """A command is still running after ``procs.RECORD_AFTER_SECONDS``."""
        proc_start = procs.proc_start_time(pid)
        if self.attempt_id is None:  # reserved: from now on an ordinary running attempt
            if self.start_reserved is not None:
                start, self.start_reserved = self.start_reserved, None
                self.attempt_id = start(pid, pgid, proc_start)
        else:
            self.store.record_spawn(self.attempt_id, pid, pgid, proc_start)
        crashpoints.hit("after-spawn")
        self._long()

    def _long(self) -> None:
        if self.on_long is not None:
            on_long, self.on_long = self.on_long, None
            on_long()

    def run(self) -> ExecResult:
        ctx, ws, job = self.ctx, self.ws, self.job
        if ctx.isolated(ws):
            try:
                self.wsp = prepare_workspace(ctx.git, ctx.layout.worktrees_dir(ctx.run_id), ctx.run_id, ws,
                                             job.attempt, self.log, ctx.layout.state_dir)
            except Exception as exc:  # a git failure fails this attempt, not the run
                return ExecResult("failed", error=f"cannot create worktree: {exc}")
            self.store.update_workstream(ctx.run_id, ws.id, worktree=str(self.wsp.path), branch=self.wsp.branch,
                                         base_commit=self.wsp.base)
            self.log(f"worktree {self.wsp.path} on {self.wsp.branch} at {self.wsp.base[:12]}")
        else:
            self.wsp = Workspace(ctx.root, False)
        leaving = leaving_path(self.wsp.path, ws)
        if leaving is not None:
            return ExecResult("failed", error=leaving)
        workdir = self.wsp.path / ws.cwd if ws.cwd else self.wsp.path
        if not os.path.isdir(workdir):
            return ExecResult("failed", error=f"cwd {ws.cwd!r} does not exist in {self.wsp.path}")
        actx = AttemptContext(
            workdir=str(workdir), env=attempt_env(ctx, ws, job.attempt, self.wsp.path, self.conflict_files,
                                                  self.lane),
            log_fd=self.log_fd, timeout=ws.timeout, cancel_fd=self.cancel_fd, on_spawn=self._on_spawn,
            on_heartbeat=lambda: self.store.heartbeat_attempt(self.attempt_id, time.time()),
            heartbeat=ATTEMPT_HEARTBEAT_SECONDS, check_output=RunningLog(self.log_fd, ctx.secrets).check)

        for command in ws.setup:
            self.log(f"setup: {command.display()}")
            result = run_command(command, actx, timeout=ws.timeout)
            if result.status != "ok":
                result.error = f"setup failed: {command.display()} ({result.error})"
                return result

        gates = GateRunner(ws, job.attempt, actx, self._record_gate, self.log)
        preexisting: set[str] = set()
        if ws.baseline_gates and ws.gates:
            for name, result in gates.run("baseline", workdir).items():
                if result.status == "cancelled":
                    return result
                if result.status != "ok":
                    preexisting.add(name)
                    self.log(f"gate already fails on the base commit, reported as pre-existing: {name}")

        executor = self._executor(gates, workdir)
        self.log(f"work: {ws.run.display() if ws.run else 'agent = ' + ws.agent}", routine=True)
        result = executor.execute(ws, actx)
        if result.status != "ok":
            return result

        failure = verify(ws, self.wsp, gates, workdir, commit_message(ctx.run_id, ws, job.attempt), preexisting)
        if failure is not None:
            return failure
        if not self.wsp.isolated:
            return result
        self.store.update_workstream(ctx.run_id, ws.id, result_commit=self.wsp.commit,
                                     changed_files=json.dumps(self.wsp.changed))
        outcome = integrate(ctx.git, ctx.run_id, ws, self.wsp, gates, workdir, preexisting,
                            self._on_integrated, self.log)
        if outcome.status == "integrated":
            self.integrated = True
            return result
        if outcome.status == "conflict":
            others = self.store.integrated_touching(ctx.run_id, outcome.conflict_files)
            self.store.update_workstream(ctx.run_id, ws.id, conflict_files=json.dumps(outcome.conflict_files),
                                         conflict_with=json.dumps(others))
            self.events.emit("ws_conflict", ws.id, job.attempt, files=outcome.conflict_files, conflict_with=others)
            detail = f" (already integrated there: {', '.join(others)})" if others else ""
            return ExecResult("conflict", error=f"{outcome.error}{detail}")
        return ExecResult(outcome.status, error=outcome.error)

    def _executor(self, gates: GateRunner, workdir: Path) -> Executor:
        """How the work is done: the command, or the built-in LLM agent."""
        ws, ctx = self.ws, self.ctx
        if not ws.agent:
            return CommandExecutor()
        self._long()  # an agent's attempt is never short
        # The LLM stack (requests and friends) is loaded only by runs that use it.
        from agentrun.agents.llm.agent import Conversation, LLMAgentExecutor, read_new_output
        from agentrun.agents.llm.call import ModelCaller
        from agentrun.agents.llm.shared import SharedLLMState
        chain = ctx.llm.chain_for(ws)
        shared = SharedLLMState(self.store, ctx.run_id)
        caller = ModelCaller(shared, self.events, ws_id=ws.id, attempt=self.job.attempt, chain=chain,
                             ws_budget=Budget(ws.max_cost_usd, ws.max_tokens, mode="hard"),
                             run_budget=ctx.llm.budget, max_concurrent=llm_concurrency(ctx.max_workers),
                             cancel_fd=self.cancel_fd, secrets=ctx.secrets)

        def run_gates():
            start = os.fstat(self.log_fd).st_size
            results = gates.run("agent", workdir)
            output = read_new_output(self.log_fd, start, ctx.secrets)
            return [(name, result, output) for name, result in results.items()]

        conversation = Conversation(conversation_path(ctx.layout, ctx.run_id, ws.id, self.job.attempt),
                                    ctx.secrets)
        return LLMAgentExecutor(caller, chain, self.wsp.path, conversation, run_gates, self.log,
                                calibration=shared.calibration(chain[0].id))

    def integrated_before_crash(self) -> bool:
        """The integration branch already carries this workstream's commit (a crash hit between
        moving the branch and recording it): record it now."""
        if not self.ctx.isolated(self.ws):
            return False
        gr = self.ctx.git
        commit = already_integrated(gr, self.ctx.run_id, self.ws.id, integration_tip(gr))
        if commit is None:
            return False
        self.store.mark_integrated(self.ctx.run_id, self.ws.id, commit, [])
        return True

    def _on_integrated(self, commit: str) -> int:
        seq = self.store.mark_integrated(self.ctx.run_id, self.ws.id, commit, self.wsp.changed)
        crashpoints.hit("after-integration")
        self.events.emit("ws_integrated", self.ws.id, self.job.attempt, commit=commit, seq=seq,
                         files=len(self.wsp.changed))
        self.log(f"integrated as {commit[:12]} (#{seq} on {self.ctx.git.integration_branch})")
        return seq

    def remove_earlier_worktree(self) -> None:
        """The worktree an earlier attempt, integrated before a crash, left behind: done work
        keeps none (what is uncommitted in it is rescued first, as always)."""
        if not self.ctx.isolated(self.ws):
            return
        path = self.ctx.layout.worktrees_dir(self.ctx.run_id) / self.ws.id
        if path.exists():
            ref = rescue_ref(self.ctx.run_id, self.ws.id, f"{self.job.attempt - 1}-left")
            if rescue_and_remove(self.ctx.git.repo, path, ref):
                self.log(f"the earlier attempt's worktree had uncommitted changes; saved as {ref}")
        self.store.update_workstream(self.ctx.run_id, self.ws.id, worktree=None)

    def cleanup(self) -> None:
        """Integrated worktrees go; others stay for inspection (listed at the end of the run)."""
        if self.wsp is None or not self.wsp.isolated or not self.integrated:
            return
        saved = rescue_and_remove(self.ctx.git.repo, self.wsp.path,
                                  rescue_ref(self.ctx.run_id, self.ws.id, self.job.attempt))
        if saved:
            self.log(f"uncommitted leftovers saved as {rescue_ref(self.ctx.run_id, self.ws.id, self.job.attempt)}")
        self.store.update_workstream(self.ctx.run_id, self.ws.id, worktree=None)


def execute_attempt(claimed: Claimed, ctx: RunContext, store: StateStore, events: EventLog, *, lane: int,
                    cancel_fd: int | None, on_long: Callable[[], object] | None = None,
                    start_reserved: Callable[[int, int, str | None], int] | None = None,
                    sweep: Callable[[], int] = lambda: 0) -> tuple[ExecResult, str | None, int | None]:
    """Everything between the claim and the outcome: returns the result that decides the outcome,
    where its log is kept, and the attempt's id (None: it stayed reserved, see ``StateStore.finish_and_claim``).

    The log is written to the worker's spool file (``claimed.log_path``) and kept as
    ``RunContext.log_path`` unless the attempt succeeded in place and nothing but the command
    line would be in it: with thousands of tiny workstreams, creating (or emptying) a file per
    silent attempt costs more than the command. The spool is empty between attempts.
    """
    job = Job(claimed.ws_id, claimed.attempt)
    log_fd = os.open(claimed.log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    if os.fstat(log_fd).st_size:  # left over by an attempt that raised before its log was settled
        os.ftruncate(log_fd, 0)
    attempt = Attempt(job, ctx, store, events, claimed.attempt_id, claimed.conflict_files, log_fd, cancel_fd, lane,
                      on_long, start_reserved)
    try:
        try:
            if claimed.integrated_commit or attempt.integrated_before_crash():
                # Integrated before a crash but not recorded done: never run or merge it twice.
                attempt.log("already integrated by an earlier attempt; recording it as done")
                attempt.remove_earlier_worktree()
                result = ExecResult("ok", 0)
            else:
                result = attempt.run()
                attempt.cleanup()
        except AgentrunError as exc:  # a repository that cannot be worked with (say so plainly)
            result = ExecResult("failed", error=str(exc))
        except Exception as exc:  # a bug fails the attempt, not the worker
            result = ExecResult("failed", error=f"internal error: {type(exc).__name__}: {exc}")
        # Before the log is settled: what is left could still write to it.
        left = sweep()
        if left:
            attempt.log(f"killed {left} process(es) the attempt left running")
        if result.status in ("failed", "timeout") and stop_requested(cancel_fd):
            # Whatever failed while the run was being stopped (a git command, a gate) failed
            # because of the stop: the work was interrupted, not wrong.
            result = ExecResult("cancelled", result.exit_code, result.signal,
                                f"stopped: run interrupted ({result.error})")
        if result.error and result.status != "ok":
            last = last_output_line(log_fd, ctx.secrets)
            if last and result.error.startswith("exit code"):
                result.error = f"{result.error}: {last}"
            attempt.log(result.error)
            ctx.forget_port(lane)
        return result, _settle_log(claimed, ctx, attempt, result, log_fd), attempt.attempt_id
    finally:
        os.close(log_fd)


def stop_requested(cancel_fd: int | None) -> bool:
    """Has the worker been told to stop (its cancel descriptor is readable)?"""
    if cancel_fd is None:
        return False
    poller = select.poll()
    poller.register(cancel_fd, select.POLLIN | select.POLLHUP)
    return bool(poller.poll(0))


def _settle_log(claimed: Claimed, ctx: RunContext, attempt: Attempt, result: ExecResult, log_fd: int) -> str | None:
    size = os.fstat(log_fd).st_size
    if result.status == "ok" and not ctx.isolated(attempt.ws) and size == 0:
        return None
    kept = ctx.log_path(claimed.ws_id, claimed.attempt)
    secrets = ctx.secrets
    whole = size <= LOG_HEAD_BYTES + LOG_TAIL_BYTES
    if attempt.header is None and whole and not secrets.found_in(log_fd, 0, size):
        os.rename(claimed.log_path, kept)  # the next attempt starts a new spool
        return kept
    try:
        with open(kept, "wb") as out:
            if attempt.header is not None:
                out.write(secrets.redact_bytes(attempt.header))
            copy_log(log_fd, size, out.write, secrets)
    except OSError:
        # Disk full, say: keep the output as it is rather than nothing, unless it holds a secret.
        if secrets.found_in(log_fd, 0, size):
            os.ftruncate(log_fd, 0)
        os.rename(claimed.log_path, kept)
        return kept
    os.ftruncate(log_fd, 0)
    return kept


def settle_orphaned_log(spool: str | None, kept: str, secrets: redaction.Secrets) -> str | None:
    """The log of an attempt whose worker died mid-way, still in that worker's spool: kept as
    ``kept``, redacted and capped like any other, and the spool removed. Returns where the log is
    now (``spool`` itself if it cannot be moved, None if there is none)."""
    if not spool or not os.path.isfile(spool) or spool == kept:
        return spool if spool and os.path.isfile(spool) else None
    fd = os.open(spool, os.O_RDONLY)
    try:
        with open(kept, "wb") as out:
            copy_log(fd, os.fstat(fd).st_size, out.write, secrets)
    except OSError:
        return spool
    finally:
        os.close(fd)
    os.unlink(spool)
    return kept


class RunningLog:
    """Keeps the log of a running attempt within about ``LOG_HEAD_BYTES + LOG_TAIL_BYTES +
    LOG_SLACK_BYTES`` on disk, where its file system can punch holes: the command appends to the
    file, so it cannot be shortened under it, but the part ``copy_log`` will omit can be given back.

    The hole lies between the head's cut and where the tail's cut is now (it only moves on as the
    log grows), and neither of its ends falls inside a secret. ``copy_log``'s cuts only move back
    to the start of a secret, so they land where they would without the hole, and what it keeps
    is exactly what it would keep. A spool kept as it is (disk full, see ``_settle_log``) holds
    whole secrets or none, which ``Secrets.found_in`` sees (a hole reads as zeros)."""

    def __init__(self, log_fd: int, secrets: redaction.Secrets):
        self.log_fd = log_fd
        self.secrets = secrets
        self.hole_end: int | None = 0   # 0: no hole yet; None: this file cannot have one
        self.size = 0
        self.checked_at = time.monotonic()
        self.delay = LOG_CHECK_SECONDS

    def check(self) -> float | None:
        """Punch if the log has outgrown the cap; returns the seconds until the next look (see
        ``procs.wait``): sooner while the log grows fast, None where it cannot have holes."""
        if self.hole_end is None:
            return None
        now = time.monotonic()
        size = os.fstat(self.log_fd).st_size
        grown, elapsed = size - self.size, now - self.checked_at
        self.size, self.checked_at = size, now
        if size - max(self.hole_end, LOG_HEAD_BYTES) > LOG_TAIL_BYTES + LOG_SLACK_BYTES:
            self._punch(size)
            if self.hole_end is None:
                return None
        # The next look when about LOG_SLACK_BYTES more are written at the rate of late, but no
        # more than twice as late as this one: a command that floods its log may pause and resume.
        due = elapsed * LOG_SLACK_BYTES / grown if grown > 0 else LOG_CHECK_SECONDS
        self.delay = min(LOG_CHECK_SECONDS, 2 * self.delay, max(LOG_CHECK_MIN_SECONDS, due))
        return self.delay

    def _punch(self, size: int) -> None:
        start = self.hole_end or self._clear_of_secrets(LOG_HEAD_BYTES, HOLE_ALIGN_BYTES, size)
        end = self._clear_of_secrets((size - LOG_TAIL_BYTES) // HOLE_ALIGN_BYTES * HOLE_ALIGN_BYTES,
                                     -HOLE_ALIGN_BYTES, size)
        if end <= start:
            return
        try:
            punched = procs.punch_hole(self.log_fd, start, end - start)
        except OSError:  # a full disk, say: trimming the log is no reason to fail the attempt
            return       # (the next look tries again)
        self.hole_end = end if punched else None

    def _clear_of_secrets(self, offset: int, step: int, size: int) -> int:
        """The first of ``offset``, ``offset + step``, ... that lies inside no secret."""
        while self.secrets.cut_before(self.log_fd, offset, size) != offset:
            offset += step
        return offset


def copy_log(log_fd: int, size: int, write: Callable[[bytes], object], secrets: redaction.Secrets) -> None:
    """The output as kept, redacted, a chunk at a time: all of it, or the first ``LOG_HEAD_BYTES``,
    a line saying how much was dropped, and the last ``LOG_TAIL_BYTES``. Neither cut splits a secret."""
    if size <= LOG_HEAD_BYTES + LOG_TAIL_BYTES:
        secrets.copy(log_fd, 0, size, write)
        return
    head_end = secrets.cut_before(log_fd, LOG_HEAD_BYTES, size)
    tail_start = secrets.cut_before(log_fd, size - LOG_TAIL_BYTES, size)
    secrets.copy(log_fd, 0, head_end, write)
    dropped = tail_start - head_end
    newline = "" if os.pread(log_fd, 1, head_end - 1) == b"\n" else "\n"
    write(f"{newline}[agentrun] ... {dropped / 1e6:.1f} MB of output omitted ({dropped} bytes; a log keeps the "
          f"first {LOG_HEAD_BYTES >> 20} MiB and the last {LOG_TAIL_BYTES >> 20} MiB of the output) ...\n".encode())
    secrets.copy(log_fd, tail_start, size, write)


def last_output_line(log_fd: int, secrets: redaction.Secrets = redaction.NO_SECRETS, window: int = 4096) -> str:
    """The last line the command printed (agentrun's own notes skipped), redacted, for error summaries."""
    size = os.fstat(log_fd).st_size
    tail = secrets.tail(log_fd, 0, size, window).decode(errors="replace")
    for line in reversed(tail.splitlines()):
        if line.strip() and not line.startswith("[agentrun]"):
            return line.strip()[:200]
    return ""


@dataclass(frozen=True)
class Outcome:
    """What one attempt's result means: the rows to write, the event, what the orchestrator is told."""

    finish: Finish
    event: tuple[str, str, int, dict]
    completion: Completion


def decide_outcome(job: Job, ctx: RunContext, store: StateStore, attempt_id: int | None, result: ExecResult,
                   log_path: str | None = None, *, set_log: bool = False, seconds: float | None = None,
                   started_at: float | None = None) -> Outcome:
    """``attempt_id`` None: a reserved attempt, which began at ``started_at``."""
    ws = ctx.workstreams[job.ws_id]
    conflict_retry = False
    failures = 0
    if result.status == "conflict" and ws.on_conflict == "retry":
        earlier = [a for a in store.attempts(ctx.run_id, ws.id) if a["status"] == "conflict"]
        conflict_retry = not earlier
    elif result.status in ("failed", "timeout", "crashed"):
        failures = store.failures(ctx.run_id, ws.id) + 1
    decision = policy.after_attempt(result.status, failures, ctx.max_attempts[ws.id], ws.retry_backoff,
                                    conflict_retry=conflict_retry)
    now = time.time()
    retry_at = now + decision.retry_in if decision.retry_in is not None else None
    attempt_status = {"ok": "done", "cancelled": "cancelled"}.get(result.status, result.status)
    error = ctx.secrets.redact(result.error) if result.error else result.error  # output, exception text
    finish = Finish(attempt_id, ws.id, attempt_status, decision.ws_status, now, result.exit_code, result.signal,
                    error, retry_at, set_log, log_path, job.attempt, started_at)
    event = {"done": "ws_done", "retrying": "ws_retrying", "failed": "ws_failed", "conflict": "ws_failed",
             "interrupted": "ws_interrupted"}[decision.ws_status]
    extra = {"exit_code": result.exit_code}
    if error:
        extra["error"] = error
    if retry_at is not None:
        extra["retry_in"] = round(decision.retry_in or 0, 3)
    return Outcome(finish, (event, ws.id, job.attempt, extra),
                   Completion(ws.id, job.attempt, decision.ws_status, retry_at, error, seconds))


def record_outcome(job: Job, ctx: RunContext, store: StateStore, events: EventLog, attempt_id: int,
                   result: ExecResult, spool: str | None = None) -> Completion:
    """Decide and record an outcome on its own (the orchestrator, for an attempt whose worker
    died, leaving its log in ``spool``)."""
    log_path = settle_orphaned_log(spool, ctx.log_path(job.ws_id, job.attempt), ctx.secrets)
    outcome = decide_outcome(job, ctx, store, attempt_id, result, log_path, set_log=True)
    store.finish_attempt(ctx.run_id, outcome.finish)
    events.emit_all([outcome.event])
    return outcome.completion
