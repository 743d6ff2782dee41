"""Crash recovery: find runs whose orchestrator died, and reconcile them.

``recover`` never re-runs anything; it makes the recorded state true again
(stops orphaned processes, marks their attempts ``lost``, repairs the event
log, saves uncommitted worktree changes) so that ``resume`` can continue.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from agentrun.run import containment
from agentrun.git import repo as git
from agentrun.proc import process as procs
from agentrun.store import redaction
from agentrun.run.attempt import settle_orphaned_log
from agentrun.run.backends.local import parse_local_external_id
from agentrun.errors import UsageError
from agentrun.store.events import EventLog, repair_tail
from agentrun.git.worktrees import rescue_ref
from agentrun.store.layout import Layout
from agentrun.spec.workstream import LLMSettings
from agentrun.store.state import StateStore, is_crashed, orchestrator_alive, return_unstarted

REQUEUE = ("pending", "ready", "running", "retrying", "lost", "interrupted")


@dataclass
class Unfinished:
    run: object
    counts: dict[str, int]
    crashed: bool

    def plan(self) -> str:
        c = self.counts
        again = sum(c.get(s, 0) for s in REQUEUE)
        steps = []
        if self.crashed:
            steps.append(f"recover: stop what is left of {c.get('running', 0)} running attempt(s), mark them lost")
        branch = self.run["integration_branch"]
        if branch and git.rev(Path(self.run["project_root"]), f"refs/heads/{branch}") is None:
            steps.append(f"cannot be resumed: its integration branch {branch} is gone")
        else:
            steps.append(f"resume: {c.get('done', 0)} done stay done; {again} queued again")
        return "; ".join(steps)


def unfinished_runs(store: StateStore) -> list[Unfinished]:
    out = []
    for run in store.runs(limit=200):
        if run["status"] == "interrupted" or is_crashed(run):
            out.append(Unfinished(run, store.counts(run["id"]), run["status"] == "running"))
    return out


def run_processes(run_id: str) -> list[int]:
    """Live processes started for this run: every command and gate carries AGENTRUN_RUN_ID."""
    needle = f"AGENTRUN_RUN_ID={run_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if needle in env and procs.is_alive(int(entry), None):
            found.append(int(entry))
    return found


@dataclass
class RecoveryReport:
    run_id: str
    actions: list[str] = field(default_factory=list)


def recover(store: StateStore, layout: Layout, run_id: str, *, grace: float = procs.KILL_GRACE_SECONDS) -> RecoveryReport:
    run = store.run(run_id)
    if run is None:
        raise UsageError(f"unknown run id '{run_id}'")
    if run["status"] == "running" and orchestrator_alive(run):
        raise UsageError(f"run {run_id} is live: its orchestrator (pid {run['orchestrator_pid']}) is running; "
                         "stop it (Ctrl-C or kill -TERM) before recovering")
    report = RecoveryReport(run_id)
    attempts = [a for a in store.attempts(run_id) if a["status"] == "running"]

    # Workers first, so that nothing writes while we reconcile: those running an attempt, and
    # those holding reservations (which may be running one not yet recorded as running). Their
    # trees are frozen first: as subreapers they hold whatever their attempts left behind, which
    # would go to init, out of reach, once they are gone.
    workers = [ident[0] for ident in map(parse_local_external_id,
                                         {a["external_id"] for a in attempts} | set(store.reservers(run_id)))
               if ident and procs.is_alive(*ident)]
    frozen = containment.freeze_trees(workers)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
        report.actions.append(f"killed orphaned worker process {pid}")
    groups = set()
    for a in attempts:
        if a["pgid"] and procs.is_alive(a["pid"], a["proc_start"]):
            groups.add(a["pgid"])
    for pid in run_processes(run_id):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    for pgid in sorted(groups):
        procs.stop_group(pgid, grace=grace)
        report.actions.append(f"stopped orphaned process group {pgid}")
    killed = containment.kill_all(frozen)
    if killed:
        report.actions.append(f"killed {killed} process(es) the workers' attempts left behind")
    if run["cgroup"] and os.path.isdir(run["cgroup"]):
        killed = containment.kill_cgroup(run["cgroup"], timeout=grace)
        if killed:
            report.actions.append(f"killed {killed} process(es) left in the run's cgroup {run['cgroup']}")
    leftovers = run_processes(run_id)
    for pid in leftovers:  # escaped into sessions of their own: stop them one by one
        try:
            os.kill(pid, signal.SIGKILL)
            report.actions.append(f"killed stray process {pid}")
        except ProcessLookupError:
            pass

    now = time.time()
    with store.write() as db:
        lost = db.execute("UPDATE attempts SET status = 'lost', finished_at = ?, error = 'orchestrator died' "
                          "WHERE run_id = ? AND status = 'running' RETURNING id, ws_id, attempt, log_path",
                          (now, run_id)).fetchall()
        db.execute("UPDATE workstreams SET status = 'lost' WHERE run_id = ? AND status = 'running'", (run_id,))
        return_unstarted(db, run_id)
        # An orchestrator that died after the last workstream ended left a finished run, not a resumable one.
        statuses = {r[0] for r in db.execute("SELECT DISTINCT status FROM workstreams WHERE run_id = ?", (run_id,))}
        final = ("interrupted" if statuses & set(REQUEUE) else "done" if statuses <= {"done"} else "failed")
        db.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ? AND status = 'running'",
                   (final, now, run_id))
    for row in lost:
        report.actions.append(f"marked {row['ws_id']} attempt {row['attempt']} lost")
    _settle_logs(store, layout, run, lost)

    report.actions.extend(_repair_git(store, run))
    events_path = layout.events_path(run_id)
    if events_path.exists():
        cut = repair_tail(events_path)
        if cut:
            report.actions.append(f"truncated a torn event-log line ({cut} bytes)")
        log = EventLog(events_path, run_id)
        log.emit("run_recovered", actions=len(report.actions), lost=[r["ws_id"] for r in lost])
        log.close()
    if run["status"] == "running":
        report.actions.append(f"marked the run {final}" + ("" if final == "interrupted" else
                                                            " (its workstreams had all ended)"))
    return report


def _settle_logs(store: StateStore, layout: Layout, run, lost) -> None:
    """Logs of lost attempts, still in their dead workers' spools: kept, redacted (with the keys
    this process can see: the same environment, usually) and capped, as a worker would have."""
    names = redaction.secret_names(LLMSettings.from_json(json.loads(run["options"]).get("llm", {})).models)
    secrets = redaction.run_secrets(names, os.environ)
    moved = []
    for row in lost:
        kept = str(layout.log_path(run["id"], row["ws_id"], row["attempt"]))
        where = settle_orphaned_log(row["log_path"], kept, secrets)
        if where != row["log_path"]:
            moved.append((where, row["id"]))
    if moved:
        with store.write() as db:
            db.executemany("UPDATE attempts SET log_path = ? WHERE id = ?", moved)


def remove_stale_ref_locks(repo: Path, run_id: str) -> list[str]:
    """A git process killed mid-update leaves its lock file behind, and every later update of
    that ref would fail. Only for a run that nothing is running for: nobody else writes its refs."""
    gitdir = Path(git.out(repo, "rev-parse", "--git-common-dir"))
    if not gitdir.is_absolute():
        gitdir = repo / gitdir
    actions = []
    for refdir in (gitdir / "refs" / "heads" / "agentrun" / run_id, gitdir / "refs" / "agentrun" / "rescue" / run_id):
        for lock in sorted(refdir.rglob("*.lock")) if refdir.is_dir() else []:
            lock.unlink(missing_ok=True)
            actions.append(f"removed stale git lock {lock.relative_to(gitdir)}")
    return actions


def _repair_git(store: StateStore, run) -> list[str]:
    if not run["integration_branch"]:
        return []
    repo = Path(run["project_root"])
    actions = remove_stale_ref_locks(repo, run["id"])
    for row in store.workstreams(run["id"]):
        tree = row["worktree"]
        if not tree or row["status"] == "done" or not (Path(tree) / ".git").is_file():
            continue  # gone, or never finished being created: nothing of ours to save
        try:
            lock = Path(git.out(Path(tree), "rev-parse", "--absolute-git-dir")) / "index.lock"
            if lock.exists():
                lock.unlink()
                actions.append(f"removed stale index lock in {tree}")
            sha = git.snapshot_tree(Path(tree), f"agentrun recover: {row['ws_id']}")
        except git.GitError as exc:
            actions.append(f"could not snapshot {tree}: {exc}")
            continue
        if sha:
            ref = rescue_ref(run["id"], row["ws_id"], f"{row['attempt']}-recover")
            git.update_ref(repo, ref, sha)
            actions.append(f"saved uncommitted changes of {row['ws_id']} as {ref}")
    return actions
