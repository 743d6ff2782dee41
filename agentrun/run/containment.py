"""Every descendant of an attempt is found and stopped, whatever it does to its session,
process group or environment (Linux).

Commands run in sessions of their own, so stopping their process group misses anything that
calls ``setsid`` (or double-forks into another session), and ``env -i`` drops the
``AGENTRUN_RUN_ID`` marker that ``recover`` looks for. Two mechanisms hold against both:

- **cgroup v2**, where the tree is writable: each run gets a cgroup beside the orchestrator's
  own (``agentrun-<run id>``), each worker moves itself into a cgroup of its own inside it
  (``w<lane>-<pid>``), and everything it starts inherits that cgroup, for good. After every
  attempt the worker kills whatever else is in its cgroup; when a worker dies the orchestrator
  kills its cgroup; after a crash ``recover`` kills the run's cgroup. Holds even when the worker
  and the orchestrator are both killed.
- **child subreaper** (``prctl(PR_SET_CHILD_SUBREAPER)``), everywhere: orphaned descendants are
  re-parented to the nearest subreaper instead of init, so they stay in the process tree of the
  worker (or of the orchestrator, if the worker died), where they are found and killed. Holds
  while the worker or the orchestrator is alive; when both are killed, ``recover`` falls back
  to the recorded process groups and the ``AGENTRUN_RUN_ID`` marker.

``AGENTRUN_CONTAINMENT=subreaper`` turns the cgroups off (to test the fallback).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time
from pathlib import Path

from agentrun.proc import process as procs

PR_SET_CHILD_SUBREAPER = 36
KILL_ROUNDS = 50   # a tree being killed cannot fork (a pending SIGKILL aborts fork): a few rounds do


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children rather than init's."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


# --- the cgroup v2 tree ---------------------------------------------------------------------
def _own_cgroup() -> Path | None:
    """The directory of this process's cgroup in the v2 hierarchy, if one is mounted."""
    mount = None
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    mount = left.split()[4]
                    break
        with open("/proc/self/cgroup") as fh:
            path = next((line[3:].strip() for line in fh if line.startswith("0::")), None)
    except OSError:
        return None
    if mount is None or path is None:
        return None
    return Path(mount) / path.lstrip("/")


def create_run_cgroup(run_id: str) -> str | None:
    """The run's cgroup (created if need be), or None where no writable v2 tree exists."""
    if os.environ.get("AGENTRUN_CONTAINMENT") == "subreaper":
        return None
    own = _own_cgroup()
    if own is None:
        return None
    path = own / f"agentrun-{run_id}"
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return None
    return str(path)


def worker_cgroup(run_cgroup: str, lane: int, pid: int) -> str:
    return f"{run_cgroup}/w{lane}-{pid}"


def join_worker_cgroup(run_cgroup: str | None, lane: int) -> str | None:
    """Move this (worker) process into a cgroup of its own inside the run's; None if it cannot."""
    if run_cgroup is None:
        return None
    path = worker_cgroup(run_cgroup, lane, os.getpid())
    try:
        os.mkdir(path)
        with open(f"{path}/cgroup.procs", "w") as fh:
            fh.write(str(os.getpid()))
    except OSError:
        _rmdir(path)
        return None
    return path


def cgroup_pids(path: str) -> set[int]:
    """Processes in the cgroup ``path`` and every cgroup below it (zombies are not listed)."""
    return set().union(*(_read_pids(f"{directory}/cgroup.procs") for directory, _, _ in os.walk(path)))


def kill_cgroup(path: str, timeout: float = procs.KILL_GRACE_SECONDS) -> int:
    """Kill everything in the cgroup ``path`` (and below), wait until it is empty, remove it.
    Returns how many processes were in it."""
    pids = cgroup_pids(path)
    if not os.path.isdir(path):
        return 0
    try:
        with open(f"{path}/cgroup.kill", "w") as fh:   # kernel 5.14+: atomic, forks included
            fh.write("1")
    except OSError:
        _kill_until_gone(lambda: cgroup_pids(path))
    deadline = time.monotonic() + timeout
    while cgroup_pids(path) and time.monotonic() < deadline:
        time.sleep(0.01)   # SIGKILLed processes are gone within a scheduler tick or two
    for directory, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        _rmdir(directory)
    return len(pids)


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
            raise


# --- process trees -----------------------------------------------------------------------------
def _read_pids(path: str) -> set[int]:
    """The pids listed in a /proc or cgroup file (empty if it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return set()
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return set()
    finally:
        os.close(fd)
    return {int(p) for p in b"".join(chunks).split()}


def children(pid: int) -> set[int]:
    """Direct children of ``pid`` (of all its threads)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return set()
    return set().union(*(_read_pids(f"/proc/{pid}/task/{tid}/children") for tid in tasks))


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children(stack.pop()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _live(pids) -> set[int]:
    return {p for p in pids if procs.is_alive(p, None)}


def _kill_until_gone(list_pids) -> int:
    """SIGKILL whatever ``list_pids()`` returns until it returns nothing alive, reaping the
    ones that are (or become, as orphans of a subreaper) this process's children."""
    killed: set[int] = set()
    for _ in range(KILL_ROUNDS):
        pids = _live(list_pids()) - {os.getpid()}
        if not pids:
            break
        _send(pids, signal.SIGKILL)
        killed |= pids
        reap(pids, block=True)
    reap(children(os.getpid()) & killed, block=False)
    return len(killed)


def reap(pids, *, block: bool) -> None:
    """Collect the exit status of those of ``pids`` that are this process's children."""
    for pid in pids:
        try:
            os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pass


def freeze_trees(roots) -> set[int]:
    """SIGSTOP the process trees under ``roots``, each process before its children are read, so
    that none can fork any more; returns every process found. For trees whose subreaper is not
    this process: killing a parent first would hand its children to init, out of reach."""
    stopped: set[int] = set()
    frontier = set(roots)
    while frontier:
        _send(frontier, signal.SIGSTOP)
        stopped |= frontier
        frontier = set().union(*(children(p) for p in frontier)) - stopped
    return stopped


def kill_all(pids) -> int:
    """SIGKILL each of ``pids`` still alive (stopped ones too); returns how many."""
    killed = _send(_live(pids), signal.SIGKILL)
    reap(pids, block=False)
    return killed


def _send(pids, sig: int) -> int:
    """Signal each of ``pids``; returns how many there were to signal."""
    sent = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent += 1
        except ProcessLookupError:
            pass
    return sent


class Sweeper:
    """A worker's view of what its attempts leave behind: after each attempt, ``sweep`` kills
    every process it started that is still there."""

    def __init__(self, run_cgroup: str | None, lane: int):
        become_subreaper()
        self.pid = os.getpid()
        self.cgroup = join_worker_cgroup(run_cgroup, lane)

    def _leftovers(self) -> set[int]:
        found = descendants(self.pid)
        if self.cgroup is not None:
            found |= cgroup_pids(self.cgroup)
        found.discard(self.pid)
        return found

    def sweep(self) -> int:
        """Kill every descendant left (the attempt's commands are waited for already). This runs
        after every attempt, so the usual case, nothing left, costs one small read: as a
        subreaper, the worker is the parent of whatever is left, or of an ancestor of it."""
        while True:  # zombies of orphans that exited by themselves (the worker has no other children)
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if not _read_pids(f"/proc/{self.pid}/task/{self.pid}/children"):
            return 0
        return _kill_until_gone(self._leftovers)


def sweep_dead_worker(run_cgroup: str | None, lane: int, pid: int, keep: set[int]) -> int:
    """In the orchestrator, after worker ``pid`` died: kill what its attempts left, in its cgroup
    and among the orphans handed to the orchestrator as subreaper (its children other than the
    workers in ``keep``)."""
    killed = 0
    if run_cgroup is not None:
        killed += kill_cgroup(worker_cgroup(run_cgroup, lane, pid))
    me = os.getpid()
    if children(me) - keep:
        killed += _kill_until_gone(lambda: set().union(*(descendants(p) | {p} for p in children(me) - keep)))
        reap(children(me) - keep, block=False)
    return killed
