"""The orchestrator: turns a plan into a run.

It owns scheduling decisions and run-level bookkeeping (ready, blocked, the
run's status and heartbeat); workers own their attempts' transitions. Both go
through the state DB, so the run can be followed, reported and recovered by
other processes.
"""

from __future__ import annotations

import heapq
import json
import os
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from agentrun.run import containment
from agentrun.store import crashpoints
from agentrun.git import repo as git
from agentrun.proc import process as procs
from agentrun.run import recovery
from agentrun.store import redaction
from agentrun.run.attempt import Completion, Job, RunContext, record_outcome
from agentrun.run.backends import Backend, Report, Requeued, Started, WorkerLost
from agentrun.run.backends.local import LocalProcessBackend
from agentrun.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, GitError, SpecError, StateError, UsageError
from agentrun.store.events import EventLog
from agentrun.proc.command import ExecResult
from agentrun.git.worktrees import GitRun, integration_branch
from agentrun.store.layout import Layout, layout_for, new_run_id, project_root
from agentrun.plan.planner import Plan, build_plan, select
from agentrun.plan.scheduler import SCHEDULES, Scheduler, lookahead, to_release
from agentrun.spec.load import Source, load_source, project_problems, source_digest
from agentrun.spec.workstream import LLMSettings, Workstream, workstreams_from_snapshots
from agentrun.store.state import StateStore, json_dumps, return_unstarted
from agentrun.spec.values import shown_path

RUN_HEARTBEAT_SECONDS = 2.0
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def hold_stop_signals() -> None:
    """Ctrl-C and SIGTERM wait from the first write of a run (or a resume) until its
    orchestrator handles them: a run is never left half-made (a branch without its row, a row
    no process will finish); it is made whole, then stopped like any run and recorded
    ``interrupted``. ``Orchestrator.run`` (or ``release_stop_signals``) lets them through."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def release_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@dataclass
class RunOptions:
    source: str = "waves"
    max_workers: int = 1
    schedule: str = "eager"
    fail_fast: bool = False
    ws_ids: tuple[str, ...] = ()
    with_deps: bool = False
    state_dir: str | None = None
    into: str | None = None
    budget_usd: float | None = None
    budget_mode: str | None = None


@dataclass
class Prepared:
    """A validated source and its plan: everything decided before anything is written."""

    options: RunOptions
    source: Source
    plan: Plan
    root: Path
    layout: Layout
    use_git: bool
    notes: list[str]
    base_ref: str = "HEAD"      # what the integration branch starts from


def prepare(options: RunOptions, cwd: Path | None = None) -> Prepared:
    if options.max_workers < 1:
        raise UsageError("--max-workers: must be at least 1")
    if options.schedule not in SCHEDULES:
        raise UsageError(f"--schedule: must be one of {', '.join(SCHEDULES)}")
    source = load_source(options.source)
    if problems := written_secrets(source.workstreams, source.llm):
        raise SpecError(problems)
    chosen = source.workstreams
    if options.ws_ids:
        chosen = select(source.workstreams, options.ws_ids, options.with_deps)
    root = project_root(cwd)
    if problems := project_problems(chosen, root):
        raise SpecError(problems)
    layout = layout_for(options.state_dir, root)
    plan = build_plan(chosen, read_history(layout, [w.id for w in chosen]))
    use_git, notes, base_ref = check_git(options, plan, root)
    if options.budget_usd is not None or options.budget_mode is not None:
        current = source.llm.budget
        source.llm.budget = replace(current, max_cost_usd=options.budget_usd if options.budget_usd is not None
                                    else current.max_cost_usd, mode=options.budget_mode or current.mode)
    return Prepared(options, source, plan, root, layout, use_git, notes, base_ref)


def written_secrets(workstreams: list[Workstream], settings: LLMSettings) -> list[str]:
    """A problem for each field of a workstream that holds the value of an API key variable set here
    (see ``redaction``): the definition is stored in the state DB and its title in commit messages."""
    by_name = {name: secrets for name in sorted(redaction.secret_names(settings.models))
               if (secrets := redaction.run_secrets([name], os.environ))}
    if not by_name:
        return []
    every = redaction.Secrets(value for secrets in by_name.values() for value in secrets.values)
    problems: list[str] = []
    for ws in workstreams:
        snapshot = ws.snapshot()[0]
        if every.redact(snapshot) == snapshot:
            continue
        for field_name, value in ws.to_json().items():
            text = json.dumps(value)
            problems += [f"{shown_path(ws.source)}: workstream '{ws.id}': field '{field_name}': holds the value of "
                         f"{name} (an API key in agentrun's environment), which would be stored in the state DB and "
                         f"commit messages; remove it and reference the key by name with secrets = [\"{name}\"]"
                         for name, secrets in by_name.items() if secrets.redact(text) != text]
    return problems


def preflight(settings: LLMSettings, plan: Plan) -> None:
    """Before a run with agent workstreams: every primary model has its API key and its endpoint answers."""
    chains = {w: settings.chain_for(ws) for w, ws in plan.workstreams.items() if ws.agent}
    if not chains:
        return
    from agentrun.agents.llm import call as llm_call  # the HTTP stack only for runs that call models
    problems = llm_call.preflight(chains)
    if problems:
        raise SpecError(problems)


def check_git(options: RunOptions, plan: Plan, root: Path) -> tuple[bool, list[str], str]:
    """Can this run isolate work in worktrees, and from which commit does it start? Errors for
    settings that cannot be honoured. With ``--into BRANCH`` the run starts from BRANCH, the
    branch its results are for, whatever is checked out."""
    wants_tree = [w for w in plan.workstreams.values() if w.isolation == "worktree"]
    if not git.is_repo(root):
        if wants_tree:
            ws = wants_tree[0]
            raise UsageError(f"{ws.source}: workstream '{ws.id}': field 'isolation': \"worktree\" needs a git "
                             f"repository and {root} is not one; use isolation = \"auto\" or \"none\"")
        if options.into:
            raise UsageError(f"--into: {root} is not a git repository")
        return False, [f"{root} is not a git repository: workstreams run in place, without worktrees or merging"], ""
    isolated = [w for w in plan.workstreams.values() if w.isolation != "none"]
    if isolated and not git.has_commits(root):
        raise UsageError(f"{root}: the git repository has no commits yet; commit once so worktrees have a "
                         "base, or set isolation = \"none\"")
    notes = []
    base_ref = "HEAD"
    if options.into:
        if not isolated:
            raise UsageError("--into: no workstream runs in a worktree (all have isolation = \"none\"), "
                             "so nothing is integrated to fast-forward to")
        if options.into.startswith("agentrun/"):
            raise UsageError(f"--into: '{options.into}' is one of agentrun's own branches; name a branch of yours")
        if git.rev(root, f"refs/heads/{options.into}") is None:
            raise UsageError(f"--into: unknown branch '{options.into}'; create it first or name an existing branch")
        holder = git.worktree_of_branch(root, options.into)
        if holder is not None and holder.resolve() != root.resolve():
            raise UsageError(f"--into: branch '{options.into}' is checked out in another worktree ({holder}); "
                             "agentrun would move it behind that checkout's back")
        if holder is not None and git.dirty_files(root):
            raise UsageError(f"--into: branch '{options.into}' is checked out with uncommitted changes; "
                             "commit or stash them first")
        base_ref = f"refs/heads/{options.into}"
        if holder is None:
            notes.append(f"--into {options.into}: the run starts from {options.into} "
                         f"({git.rev(root, base_ref)[:12]}), not from what is checked out "
                         f"({git.current_branch(root) or 'HEAD'})")
    if isolated and base_ref == "HEAD" and git.dirty_files(root):
        notes.append("the working tree has uncommitted changes: workstreams start from HEAD and do not see them")
    return bool(isolated), notes, base_ref


def read_history(layout: Layout, ws_ids: list[str]) -> dict[str, list[float]]:
    """Past durations from the state DB, if there is one; planning never creates it."""
    if not layout.db_path.is_file():
        return {}
    try:
        store = StateStore(layout.db_path, readonly=True)
    except StateError:
        return {}
    try:
        return store.history(ws_ids)
    finally:
        store.close()


def create_run(prep: Prepared) -> tuple[StateStore, str]:
    """Write the run and its workstreams; from here on the run exists."""
    opts = prep.options
    try:
        os.makedirs(prep.layout.state_dir, exist_ok=True)
    except OSError as exc:
        raise StateError(f"{prep.layout.state_dir}: cannot create the state directory ({exc.strerror}); "
                         "pass a writable --state-dir") from None
    store = StateStore(prep.layout.db_path)
    plan = prep.plan
    base = git.rev(prep.root, prep.base_ref) if prep.use_git else None
    snapshots = {w: ws.snapshot() for w, ws in plan.workstreams.items()}

    def run_row(run_id: str) -> dict:
        git_fields = {"base_commit": base, "integration_branch": integration_branch(run_id),
                      "into_branch": opts.into} if prep.use_git else {}
        return {
            "id": run_id, "source": str(Path(opts.source).resolve()), "project_root": str(prep.root),
            "options": json_dumps({"max_workers": opts.max_workers, "schedule": opts.schedule,
                                   "fail_fast": opts.fail_fast, "ws_ids": list(opts.ws_ids),
                                   "with_deps": opts.with_deps, "llm": prep.source.llm.to_json(),
                                   "source_digest": source_digest(opts.source)}),
            "status": "running", "created_at": time.time(), "max_workers": opts.max_workers,
            "orchestrator_pid": os.getpid(), "orchestrator_start": procs.proc_start_time(os.getpid()),
            "heartbeat_at": time.time(),
            "schedule": opts.schedule, "spec_hash": json_dumps(sorted((w, h) for w, (_, h) in snapshots.items())),
            "notes": json_dumps(prep.notes), **git_fields,
        }

    # Work without dependencies is ready from the start: recorded so now, not by a second pass over
    # every row once the run starts.
    rows = [(w, *snapshots[w], "pending" if plan.deps[w] else "ready", ws.retries + 1, plan.wave_of[w],
             plan.estimates[w]) for w, ws in plan.workstreams.items()]
    run_id = store.create_run(lambda latest: new_run_id(after=latest), run_row, rows)
    prep.layout.create_run_dirs(run_id)
    if prep.use_git:
        try:
            git.run(prep.root, "branch", integration_branch(run_id), base)
        except GitError:
            store.delete_run(run_id)
            store.close()
            raise
        try:
            git.exclude_path(prep.root, "/" + str(prep.layout.state_dir.relative_to(prep.root)) + "/")
        except ValueError:
            pass  # state directory outside the repository
    return store, run_id


@dataclass
class Resumption:
    """What ``resume`` found and decided before running anything."""

    store: StateStore
    run: object
    plan: Plan | None
    options: RunOptions
    notes: list[str]
    recovered: list[str]
    final_status: str | None = None    # with no plan: the run's status, now that nothing is left


def prepare_resume(layout: Layout, run_id: str, *, accept_changes: bool, max_workers: int | None) -> Resumption:
    if not layout.db_path.is_file():
        raise StateError(f"{layout.db_path}: no state DB here; nothing to resume (pass --state-dir?)")
    StateStore(layout.db_path, readonly=True).close()  # refuses a corrupt DB before anything writes
    store = StateStore(layout.db_path)
    run = store.run(run_id)
    if run is None:
        store.close()
        raise UsageError(f"unknown run id '{run_id}'; `agentrun recover --list` shows runs that can be resumed")
    if run["status"] == "abandoned":
        store.close()
        raise UsageError(f"run {run_id} was abandoned (`agentrun clean --all` removed its integration branch); "
                         "start a new run")
    if run["integration_branch"] and git.rev(Path(run["project_root"]),
                                             f"refs/heads/{run['integration_branch']}") is None:
        store.close()
        raise UsageError(f"run {run_id} cannot continue: its integration branch {run['integration_branch']} is gone "
                         "(deleted by hand?); start a new run")
    recovered: list[str] = []
    if run["status"] == "running":
        report = recovery.recover(store, layout, run_id)  # refuses a live run
        recovered = report.actions
        run = store.run(run_id)
    saved = json.loads(run["options"])
    options = RunOptions(source=run["source"], max_workers=max_workers or saved["max_workers"],
                         schedule=saved["schedule"], fail_fast=saved["fail_fast"], ws_ids=tuple(saved["ws_ids"]),
                         with_deps=saved["with_deps"], state_dir=str(layout.state_dir), into=run["into_branch"])
    if run["status"] == "done":
        return Resumption(store, run, None, options, [f"run {run_id} already finished with every workstream "
                                                      "done; nothing to resume"], recovered, "done")
    rows = {r["ws_id"]: r for r in store.workstreams(run_id)}
    recorded = workstreams_from_snapshots([json.loads(r["spec"]) for r in rows.values()], run["source"])
    notes, current = _compare_source(run["source"], recorded, rows, accept_changes, saved.get("source_digest"))
    reset = {w for w, r in rows.items() if r["status"] in recovery.REQUEUE}
    reset |= {w for w, ws in current.items() if ws is not recorded[w] and rows[w]["status"] in ("failed", "conflict")}
    if not reset:
        failed = sorted(w for w, r in rows.items() if r["status"] in ("failed", "conflict"))
        notes.append(f"run {run_id} has no lost, interrupted or pending work; nothing to resume"
                     + (f" (failed: {', '.join(failed)}; edit them and pass --accept-changes to retry)" if failed else ""))
        final = "failed" if any(r["status"] != "done" for r in rows.values()) else "done"
        if run["status"] != final:  # e.g. every workstream finished, but the orchestrator died first
            store.update_run(run_id, status=final, finished_at=time.time())
            notes.append(f"marked the run {final}")
        return Resumption(store, run, None, options, notes, recovered, final)
    reset |= {w for w, r in rows.items() if r["status"] == "blocked"}  # re-derived from what still fails
    with store.write() as db:
        for ws_id, ws in current.items():
            if ws is not recorded[ws_id]:
                db.execute("UPDATE workstreams SET spec = ?, spec_hash = ?, max_attempts = ? "
                           "WHERE run_id = ? AND ws_id = ?",
                           (json_dumps(ws.to_json()), ws.spec_hash(), ws.retries + 1, run_id, ws_id))
        db.executemany("UPDATE workstreams SET status = 'pending', retry_at = NULL WHERE run_id = ? AND ws_id = ?",
                       [(run_id, w) for w in sorted(reset)])
    plan = build_plan(list(current.values()), read_history(layout, list(current)))
    claim_run(store, run_id)
    if run["integration_branch"]:  # a git killed by a signal on the way out leaves locks (ours now)
        recovered += recovery.remove_stale_ref_locks(Path(run["project_root"]), run_id)
    return Resumption(store, run, plan, options, notes, recovered)


def claim_run(store: StateStore, run_id: str) -> None:
    """Mark the run as ours, atomically: two resumes of one run cannot both go ahead."""
    with store.write() as db:
        # A fatal API error of the last session is forgotten: the user has fixed the key (or not,
        # and the first call says so again).
        got = db.execute("UPDATE runs SET status = 'running', orchestrator_pid = ?, orchestrator_start = ?, "
                         "heartbeat_at = ?, finished_at = NULL, fatal_error = NULL "
                         "WHERE id = ? AND status != 'running' RETURNING id",
                         (os.getpid(), procs.proc_start_time(os.getpid()), time.time(), run_id)).fetchone()
    if got is None:
        raise UsageError(f"run {run_id} is already being resumed by another agentrun process")


def _compare_source(source: str, recorded: dict, rows: dict, accept: bool,
                    digest: str | None) -> tuple[list[str], dict]:
    """Detect edits to the workstream files since the run started (by spec hash)."""
    notes: list[str] = []
    current = dict(recorded)
    if digest is not None and source_digest(source) == digest:
        return notes, current  # byte-for-byte the files the run started from
    try:
        fresh = load_source(source).by_id()
    except SpecError as exc:
        if accept:
            raise
        notes.append(f"{source} no longer loads ({exc.problems[0]}); using the recorded definitions")
        return notes, current
    changed = sorted(w for w in recorded if w in fresh and fresh[w].spec_hash() != rows[w]["spec_hash"])
    added = sorted(set(fresh) - set(recorded))
    if added:
        notes.append(f"not part of this run (start a new run for them): {', '.join(added)}")
    if not changed:
        return notes, current
    done = [w for w in changed if rows[w]["status"] == "done"]
    if accept:
        todo = [w for w in changed if w not in done]
        for w in todo:
            current[w] = fresh[w]
        if todo:
            notes.append(f"using the edited definitions of: {', '.join(todo)}")
        if done:
            notes.append(f"edited after they were done, not re-run: {', '.join(done)}")
    else:
        notes.append(f"workstream files changed since the run started: {', '.join(changed)}; using the recorded "
                     "definitions (pass --accept-changes to use the new ones)")
    return notes, current


@dataclass
class RunResult:
    run_id: str
    status: str
    counts: dict[str, int]
    elapsed: float
    exit_code: int


@dataclass
class Orchestrator:
    store: StateStore
    layout: Layout
    run_id: str
    plan: Plan
    root: Path
    options: RunOptions
    display: object = None
    resumed: bool = False
    ctx: RunContext = field(init=False)

    def __post_init__(self) -> None:
        self.events = EventLog(self.layout.events_path(self.run_id), self.run_id)
        run_row = self.store.run(self.run_id)
        self.llm = LLMSettings.from_json(json.loads(run_row["options"]).get("llm", {}))
        self.ctx = RunContext(
            run_id=self.run_id, root=self.root, layout=self.layout, workstreams=self.plan.workstreams,
            max_attempts={w: ws.retries + 1 for w, ws in self.plan.workstreams.items()},
            base_env=dict(os.environ), git=git_run_for(run_row, self.layout), llm=self.llm,
            max_workers=self.options.max_workers)
        redaction.use(self.ctx.secrets)   # for this process and the workers it forks
        self.uses_llm = any(ws.agent for ws in self.plan.workstreams.values())
        self.draining: str | None = None   # set: start nothing new, let running work finish
        self._newly_ready: list[str] = []
        self.inflight: dict[str, int | None] = {}  # released to the workers, outcome not yet handled: attempt
        self._handled: set[tuple[str, int]] = set()  # (ws, attempt) outcomes handled: reports may repeat
        self._queue_seq = 0
        self._recorded_ready: set[str] = set()  # ready in the DB before this orchestrator said so
        self._typical: float | None = None  # recent attempt duration (moving average), for the lookahead
        self._reserving = True  # work may be released ahead of free workers (and so reserved)
        self._budget_events: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.retry_heap: list[tuple[float, str]] = []
        self.stop_reason: str | None = None
        self.sched: Scheduler | None = None
        self.t0 = time.time()

    # --- signals -------------------------------------------------------------
    def _install_signals(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)

        def on_signal(signum, frame):
            if self.stop_reason is None:
                self.stop_reason = "interrupted"

        self._old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        # A closed terminal (SIGHUP) is not a reason to stop: the run goes on, its output is
        # dropped (see cli_common.ForgivingOutput). Workers forked later inherit this; commands
        # get the default back (procs.spawn).
        self._old[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._old_wakeup = signal.set_wakeup_fd(wake_w)
        self._wake = (wake_r, wake_w)
        return wake_r

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for s, handler in self._old.items():
            signal.signal(s, handler)
        for fd in self._wake:
            os.close(fd)

    # --- the run ---------------------------------------------------------------
    def run(self) -> RunResult:
        wake_r = self._install_signals()
        release_stop_signals()  # a Ctrl-C held back while the run was being made lands here
        statuses = {}
        for ws_id, status, attempt in self.store.progress(self.run_id):
            statuses[ws_id] = status
            self.attempts[ws_id] = attempt
        self._recorded_ready = {w for w, s in statuses.items() if s == "ready"}
        done = [w for w, s in statuses.items() if s == "done"]
        failed = {w for w, s in statuses.items() if s in ("failed", "conflict")}
        self.sched = Scheduler(self.plan, self.options.schedule, completed=done, blocked=failed)
        already = {w for w, s in statuses.items() if s == "blocked"}
        newly_blocked = sorted(self.sched.blocked - failed - already)
        # Orphans of a worker that dies come to the orchestrator, which kills them (see containment).
        containment.become_subreaper()
        redaction.hide_process_files()
        self.ctx.cgroup = containment.create_run_cgroup(self.run_id)
        self.store.update_run(self.run_id, status="running", orchestrator_pid=os.getpid(),
                              orchestrator_start=procs.proc_start_time(os.getpid()), heartbeat_at=time.time(),
                              cgroup=self.ctx.cgroup)
        self.store.unqueue(self.run_id, restart=True)  # what a dead orchestrator released is decided again
        # Never more workers than workstreams that may still run (for a resume: what is left).
        self.ctx.max_workers = max(1, min(self.options.max_workers, len(self.sched.pending())))
        self.events.emit("run_resumed" if self.resumed else "run_started", workers=self.ctx.max_workers,
                         schedule=self.options.schedule, workstreams=len(self.plan.workstreams),
                         containment="cgroup" if self.ctx.cgroup else "subreaper")
        if newly_blocked:  # on resume: dependents of work that failed before
            self.store.set_status(self.run_id, newly_blocked, "blocked", error="a dependency failed",
                                  now=time.time())
            for ws_id in newly_blocked:
                self.events.emit("ws_blocked", ws_id, None)
        self._newly_ready = list(self.sched.initially_ready)
        backend = LocalProcessBackend(self.ctx, self.ctx.max_workers,
                                      before_fork=lambda: self.store.close(), after_fork=self._reopen)
        self.backend = backend
        last_beat = time.monotonic()
        try:
            while self.stop_reason is None:
                self._dispatch(backend)
                if self.sched.finished() or (self.draining and not self.sched.running):
                    break
                crashpoints.hit("orchestrator-loop")
                reports = backend.poll(self._poll_timeout(), [wake_r])
                for report in reports:
                    self._on_report(report)
                if self.uses_llm and (reports or time.monotonic() - last_beat >= RUN_HEARTBEAT_SECONDS):
                    self._check_llm_limits()
                self._release_due_retries()
                if time.monotonic() - last_beat >= RUN_HEARTBEAT_SECONDS:
                    self.store.update_run(self.run_id, heartbeat_at=time.time())
                    last_beat = time.monotonic()
                self._show()
        except BaseException as exc:
            # Whatever went wrong here, running work is stopped and the run is recorded
            # as ended before the error surfaces.
            self.stop_reason = self.stop_reason or f"error: {type(exc).__name__}: {exc}"
            raise
        finally:
            if self.stop_reason is not None:
                self._unqueue()
                backend.cancel_all()
            for report in backend.shutdown():
                self._on_report(report)
            if self.ctx.cgroup is not None:
                containment.kill_cgroup(self.ctx.cgroup)  # empty by now: every worker swept and left
            if self._newly_ready:  # became ready in the last moments; recorded, though nothing starts now
                self._release(self._newly_ready, [])
            result = self._finish()
            self._restore_signals()
        return result

    def _reopen(self) -> None:
        self.store = StateStore(self.layout.db_path)

    def _poll_timeout(self) -> float:
        timeout = RUN_HEARTBEAT_SECONDS
        if self.display is not None:
            timeout = min(timeout, getattr(self.display, "interval", timeout))
        if self.retry_heap:
            timeout = min(timeout, max(0.0, self.retry_heap[0][0] - time.time()))
        return timeout

    def _dispatch(self, backend: Backend) -> None:
        """Mark what became ready, release the best of the ready work to the workers: one transaction."""
        extra = lookahead(backend.size, self._typical if self._reserving else None)
        want = to_release(backend.size, extra, len(self.inflight)) if self.draining is None else 0
        taken = self.sched.take(want) if want > 0 else []
        # With short attempts, what became ready is recorded with the next batch.
        if taken or (self._newly_ready and not extra):
            ready, self._newly_ready = self._newly_ready, []
            self._release(ready, taken)
        backend.grow(len(self.inflight))
        # Also after releasing nothing: a worker may have looked for work just before the last release.
        backend.submit(self._queue_seq)

    def _release(self, ready: list[str], taken: list[str]) -> None:
        queued = []
        for ws_id in taken:
            self._queue_seq += 1
            queued.append((ws_id, self._queue_seq))
            self.inflight[ws_id] = None
        # Before the release: a worker may start (and log) a released job at once.
        self.events.emit_all([("ws_ready", w, self.attempts.get(w, 0) + 1, {}) for w in ready])
        if self._recorded_ready:  # the first release of a new run: most of it is ready in the DB already
            ready = [w for w in ready if w not in self._recorded_ready]
            self._recorded_ready = set()
        for ws_id in self.store.dispatch(self.run_id, ready, queued):
            del self.inflight[ws_id]  # not ready in the DB after all: leave it, as a failed claim would
            self.sched.release(ws_id)

    def _unqueue(self, dead_worker: str | None = None) -> None:
        """Take back released work no worker has claimed (or reserved, unless the worker is
        ``dead_worker``): it goes back to the ready queue."""
        for ws_id in self.store.unqueue(self.run_id, dead_worker=dead_worker):
            if self.inflight.get(ws_id, 0) is None:
                del self.inflight[ws_id]
                self.sched.requeue(ws_id)

    def _on_report(self, report: Report) -> None:
        if isinstance(report, Started):
            # Reports can be late: one for an attempt whose outcome is already handled is stale.
            if self.inflight.get(report.ws_id, 0) is None and report.attempt > self.attempts.get(report.ws_id, 0):
                self.inflight[report.ws_id] = report.attempt
                self.attempts[report.ws_id] = report.attempt
                self.started[report.ws_id] = time.time()
        elif isinstance(report, WorkerLost):
            self._reconcile(report)
        elif isinstance(report, Requeued):
            if self.draining or self.stop_reason:
                self._unqueue()  # starting nothing new: what was handed back stays unstarted
            else:
                self._rereleased()
        else:
            self._handle(report)

    def _rereleased(self) -> None:
        """Work was released again without a new release (reservations handed back or dropped):
        a queue number past what idle workers have seen makes ``submit`` wake them to look."""
        self._queue_seq += 1
        self.store.bump_released(self.run_id, self._queue_seq)

    def _handle(self, c: Completion) -> None:
        if (c.ws_id, c.attempt) in self._handled or c.ws_id not in self.inflight:
            return  # already handled (found in the DB after a worker died, then reported after all)
        self._handled.add((c.ws_id, c.attempt))
        del self.inflight[c.ws_id]
        self.attempts[c.ws_id] = c.attempt
        self.started.pop(c.ws_id, None)
        if c.seconds is not None:
            self._typical = c.seconds if self._typical is None else 0.8 * self._typical + 0.2 * c.seconds
        sched = self.sched
        if c.status == "done":
            self._newly_ready.extend(sched.mark_done(c.ws_id))
        elif c.status == "retrying":
            sched.defer(c.ws_id)
            heapq.heappush(self.retry_heap, (c.retry_at or time.time(), c.ws_id))
        elif c.status in ("failed", "conflict"):
            blocked = sched.mark_failed(c.ws_id)
            if blocked:
                self.store.set_status(self.run_id, blocked, "blocked", error=f"dependency '{c.ws_id}' failed",
                                      now=time.time())
                self.events.emit_all([("ws_blocked", w, None, {"because": c.ws_id}) for w in blocked])
            if self.options.fail_fast and self.stop_reason is None:
                self.stop_reason = "fail-fast"
        elif self.stop_reason is None and self.draining is None:
            # Interrupted while the run goes on: its worker alone was stopped (a signal to that
            # process). The work was not at fault: it runs again.
            sched.requeue(c.ws_id)
            self._newly_ready.append(c.ws_id)
        else:  # interrupted by the run's own stop
            sched.release(c.ws_id)

    def _reconcile(self, lost: WorkerLost) -> None:
        """A worker died. The DB says what it had done: outcomes it recorded but never reported are
        handled now; an attempt it was running is stopped and counted as a failed attempt; work
        it had reserved is released again, never run as far as the DB knows.

        Which of its reserved attempts it was running when it died is not recorded, so none is
        counted; from now on nothing is released ahead of free workers, so nothing is reserved,
        and a workstream that takes its worker down is counted the next time it does it."""
        if not self.inflight:
            return  # nothing released was unfinished (workers exiting at the end of a run)
        self._reserving = False
        self._unqueue(dead_worker=lost.external_id)  # released ahead, its reservations too: released
                                                     # again, one per free worker
        for ws_id in list(self.inflight):
            row = self.store.workstream(self.run_id, ws_id)
            if row["status"] in ("done", "retrying", "failed", "conflict", "interrupted"):
                self._handle(Completion(ws_id, row["attempt"], row["status"], row["retry_at"], row["error"]))
                continue
            if row["status"] != "running":
                continue  # released, not claimed yet: another worker will take it
            attempt = self.store.db.execute(
                "SELECT * FROM attempts WHERE run_id = ? AND ws_id = ? AND attempt = ?",
                (self.run_id, ws_id, row["attempt"])).fetchone()
            if attempt is None or attempt["status"] != "running" or attempt["external_id"] != lost.external_id:
                continue  # another worker's
            if attempt["pgid"] and procs.is_alive(attempt["pid"], attempt["proc_start"]):
                procs.stop_group(attempt["pgid"])
            self.events.emit("ws_crashed", ws_id, attempt["attempt"], error=lost.error)
            self._handle(record_outcome(Job(ws_id, attempt["attempt"]), self.ctx, self.store, self.events,
                                        attempt["id"], ExecResult("crashed", error=lost.error), attempt["log_path"]))

    def _check_llm_limits(self) -> None:
        """A fatal API error stops the run; the run budget warns, drains (soft) or stops (hard)."""
        from agentrun.agents.llm.shared import SharedLLMState  # runs without agents never load it
        shared = SharedLLMState(self.store, self.run_id)
        fatal = shared.fatal()
        if fatal and self.stop_reason is None:
            self.stop_reason = f"fatal: {fatal}"
            return
        limit = self.llm.budget
        if limit.max_cost_usd is None and limit.max_tokens is None:
            return
        spent = shared.spent()
        used_up = ((limit.max_cost_usd is not None and spent.cost_usd >= limit.max_cost_usd)
                   or (limit.max_tokens is not None and spent.tokens >= limit.max_tokens))
        # A call refused because it would cross the budget was already reported by its worker.
        refused = not used_up and shared.run_budget_refused()
        near = ((limit.max_cost_usd is not None and spent.cost_usd >= limit.warn_at * limit.max_cost_usd)
                or (limit.max_tokens is not None and spent.tokens >= limit.warn_at * limit.max_tokens))
        detail = f"spent ${spent.cost_usd:.4f} and {spent.tokens} tokens"
        if near and "warn" not in self._budget_events:
            self._budget_events.add("warn")
            self.events.emit("budget_warning", scope="run", detail=detail)
        if (used_up or refused) and "over" not in self._budget_events:
            self._budget_events.add("over")
            if used_up:
                self.events.emit("budget_exceeded", scope="run", detail=detail, mode=limit.mode)
            if limit.mode == "soft":
                self.draining = "budget"
                self._unqueue()
            elif limit.mode == "hard" and self.stop_reason is None:
                self.stop_reason = "budget"

    def _release_due_retries(self) -> None:
        due = []
        now = time.time()
        while self.retry_heap and self.retry_heap[0][0] <= now:
            due.append(heapq.heappop(self.retry_heap)[1])
        if due:
            self._newly_ready.extend(due)
            for ws_id in due:
                self.sched.requeue(ws_id)

    def _show(self, force: bool = False) -> None:
        if self.display is not None:
            self.display.update(self, force=force)

    def _finish(self) -> RunResult:
        with self.store.write() as db:
            return_unstarted(db, self.run_id)
        counts = self.store.counts(self.run_id)
        total = sum(counts.values())
        if self.stop_reason == "interrupted":
            status, code = "interrupted", EXIT_INTERRUPTED
        elif self.stop_reason or self.draining:
            status, code = "failed", EXIT_FAILED
        elif counts.get("done", 0) == total:
            status, code = "done", EXIT_OK
        else:
            status, code = "failed", EXIT_FAILED
        now = time.time()
        self.store.update_run(self.run_id, status=status, finished_at=now, heartbeat_at=now)
        kind = "run_interrupted" if status == "interrupted" else "run_finished"
        self.events.emit(kind, status=status, counts=counts, elapsed=round(now - self.t0, 3),
                         reason=self.stop_reason or self.draining)
        self._show(force=True)
        self.events.close()
        return RunResult(self.run_id, status, counts, now - self.t0, code)

    # --- views for displays ------------------------------------------------------
    def eta(self) -> float | None:
        """Seconds left by the estimates: max(remaining work / workers, longest remaining path)."""
        if self.sched is None:
            return None
        now = time.time()
        pending = self.sched.pending()
        if not pending:
            return 0.0
        work = 0.0
        for w in pending:
            spent = now - self.started[w] if w in self.started else 0.0
            work += max(0.0, self.plan.estimates[w] - spent)
        longest = max(self.plan.rank[w] - (now - self.started.get(w, now)) for w in pending)
        return max(work / self.ctx.max_workers, longest, 0.0)


def git_run_for(run_row, layout: Layout) -> GitRun | None:
    if not run_row["integration_branch"]:
        return None
    locks = layout.state_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return GitRun(Path(run_row["project_root"]), run_row["base_commit"], run_row["integration_branch"],
                  locks / f"{run_row['id']}.integration.lock")

